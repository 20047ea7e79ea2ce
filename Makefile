# Builds ./train (the trainer), build/run_tests (the doctest suite) and the benchmarks.
#   make                 ./train, and the default data in data/ if it is missing (needs network once)
#   make test            builds and runs every test; ends with "N passed, N failed, N skipped"
#   make bench           builds the benchmarks in bench/
#   make clean
# GPU_ARCH picks the CUDA target (sm_90 = H100/H200); CUDA the toolkit's directory.
CUDA     ?= /usr/local/cuda
GPU_ARCH ?= sm_90
NVCC     ?= $(CUDA)/bin/nvcc
CXX      ?= g++

MPI_CFLAGS  := $(shell mpicxx --showme:compile 2>/dev/null)
MPI_LDFLAGS := $(shell mpicxx --showme:link 2>/dev/null)
ifeq ($(MPI_LDFLAGS),)
$(error mpicxx not found: install OpenMPI (Debian: apt-get install libopenmpi-dev openmpi-bin))
endif

COMMON   := -O2 -g -DOMPI_SKIP_MPICXX -I. -I$(CUDA)/include $(MPI_CFLAGS)
CXXFLAGS := -std=c++17 -Wall -Wextra $(COMMON)
NVFLAGS  := -std=c++17 -arch=$(GPU_ARCH) -Xcompiler -Wall,-Wextra $(COMMON)
LDLIBS   := -L$(CUDA)/lib64 -L$(CUDA)/lib -Wl,-rpath,$(CUDA)/lib64 -Wl,-rpath,$(CUDA)/lib \
            -lcublasLt -lnccl -lcudart $(MPI_LDFLAGS) -lpthread

B := build
OBJS      := $(B)/json.o $(B)/safetensors.o $(B)/tokenizer.o $(B)/data.o $(B)/llama.o $(B)/lora.o $(B)/adamw.o $(B)/zero3.o
TEST_OBJS := $(patsubst test/%.cpp,$(B)/test/%.o,$(wildcard test/*.cpp))
HEADERS   := $(wildcard *.h)

.PHONY: all data test bench clean
all: train data

train: $(B)/train.o $(OBJS)
	$(CXX) -o $@ $^ $(LDLIBS)

$(B)/run_tests: $(TEST_OBJS) $(OBJS)
	$(CXX) -o $@ $^ $(LDLIBS)

$(B)/tokenize_bench: $(B)/bench/tokenize_bench.o $(OBJS)
	$(CXX) -o $@ $^ $(LDLIBS)

$(B)/%.o: %.cpp $(HEADERS)
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -c -o $@ $<

$(B)/%.o: %.cu $(HEADERS)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c -o $@ $<

$(B)/test/%.o: test/%.cpp $(HEADERS) test/test.h
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -c -o $@ $<

# The default data (tokenizer, corpus, QA set): fetched once; kept when present (GPU machines have no network).
data:
	@test -s data/tokenizer.json -a -f data/corpus/.complete -a -s data/qa_train.jsonl -a -s data/qa_eval.jsonl \
	  || bash data/fetch.sh

test: $(B)/run_tests train data
	./$(B)/run_tests

bench: $(B)/tokenize_bench data

clean:
	rm -rf $(B) train
