# Builds ./train (the trainer), build/run_tests (the doctest suite) and the benchmarks.
#   make deps            installs what the build, the tests and the default data need (Debian/Ubuntu; deps.sh)
#   make                 ./train, and the default data in data/ if it is missing (needs network once)
#   make test            builds and runs every test; ends with "N passed, N failed, N skipped"
#   make bench           builds the benchmarks in bench/
#   make clean
# CUDA is the toolkit's directory. GPU_ARCH=sm_XY builds for one GPU architecture (sm_80 A100, sm_86 A10G,
# sm_89 L4/L40S, sm_90a H100/H200); by default the build is for the GPU nvidia-smi sees, and with none
# visible (CI, a login node) a fat binary: machine code for sm_80, sm_86, sm_89, sm_90a and PTX that newer
# GPUs compile when the program loads. An H100/H200 is built as sm_90a: the Hopper attention kernels
# (kernels/attention_sm90.cuh: wgmma, TMA) need it; GPU_ARCH=sm_90 builds without them (the portable kernels run).
CUDA     ?= /usr/local/cuda
NVCC     ?= $(CUDA)/bin/nvcc
CXX      ?= g++
B        := build

DETECTED := $(shell nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '.[:space:]')
ifeq ($(GPU_ARCH),)
  ifneq ($(DETECTED),)
    GPU_ARCH := $(if $(filter 90,$(DETECTED)),sm_90a,sm_$(DETECTED))
  endif
endif
ifneq ($(GPU_ARCH),)
  ARCH_FLAGS := -gencode arch=compute_$(subst sm_,,$(GPU_ARCH)),code=$(GPU_ARCH)
else
  ARCH_FLAGS := $(foreach a,80 86 89 90a,-gencode arch=compute_$(a),code=sm_$(a)) -gencode arch=compute_90,code=compute_90
endif

# MPI's compile and link flags: MPI_CFLAGS and MPI_LDFLAGS when given (on the command line or in the
# environment), else asked of the MPI C++ wrapper $(MPICXX): OpenMPI's `--showme:compile` / `--showme:link`,
# or MPICH's `-show` (MPICH, Intel MPI, MVAPICH, Cray MPICH's mpicxx), whose one command line is split into
# its -I/-D words and its -L/-l/-Wl words.
MPICXX ?= mpicxx
ifeq ($(origin MPI_LDFLAGS),undefined)
  MPI_CFLAGS  := $(shell $(MPICXX) --showme:compile 2>/dev/null)
  MPI_LDFLAGS := $(shell $(MPICXX) --showme:link 2>/dev/null)
  ifeq ($(MPI_LDFLAGS),)
    MPI_SHOW    := $(shell $(MPICXX) -show 2>/dev/null)
    MPI_CFLAGS  := $(filter -I% -D% -pthread,$(MPI_SHOW))
    MPI_LDFLAGS := $(filter -L% -l% -Wl% -pthread,$(MPI_SHOW))
  endif
endif
ifeq ($(filter deps clean,$(MAKECMDGOALS)),)
  ifeq ($(strip $(MPI_LDFLAGS)),)
    $(error MPI not found: no $(MPICXX) answering --showme (OpenMPI) or -show (MPICH). Run `make deps` (apt-get install libopenmpi-dev openmpi-bin), or name the wrapper (make MPICXX=mpicxx.mpich), or give the flags: make MPI_CFLAGS="-I/path/to/mpi/include" MPI_LDFLAGS="-L/path/to/mpi/lib -lmpi" (Cray: MPI_CFLAGS="$$(CC --cray-print-opts=cflags)" MPI_LDFLAGS="$$(CC --cray-print-opts=libs)"))
  endif
  ifeq ($(wildcard $(NVCC)),)
    $(error the CUDA Toolkit is not at $(CUDA) (no bin/nvcc): install it (https://developer.nvidia.com/cuda-downloads), or make CUDA=/path/to/cuda)
  endif
  # objects are rebuilt when the GPU target changes
  $(shell mkdir -p $(B); echo '$(ARCH_FLAGS)' | cmp -s - $(B)/arch.flags || echo '$(ARCH_FLAGS)' > $(B)/arch.flags)
endif

# -ffp-contract=off: host float arithmetic rounds every operation (no fused multiply-adds), as the GPU
# optimizer does, so CPU offload trains bitwise like the GPU (adamw.cu).
COMMON   := -O2 -g -DOMPI_SKIP_MPICXX -I. -I$(CUDA)/include $(MPI_CFLAGS)
CXXFLAGS := -std=c++17 -Wall -Wextra -ffp-contract=off $(COMMON)
NVFLAGS  := -std=c++17 $(ARCH_FLAGS) -Xcompiler -Wall,-Wextra,-ffp-contract=off $(COMMON)
LDLIBS   := -L$(CUDA)/lib64 -L$(CUDA)/lib -Wl,-rpath,$(CUDA)/lib64 -Wl,-rpath,$(CUDA)/lib \
            -lcublasLt -lnccl -lcudart $(MPI_LDFLAGS) -lpthread

# Every source of the root's lesson files and of the rooms (kernels/, distributed/, support/), but main's.
SOURCES   := $(filter-out train.cpp,$(wildcard *.cpp *.cu kernels/*.cu distributed/*.cpp distributed/*.cu support/*.cpp support/*.cu))
OBJS      := $(patsubst %,$(B)/%.o,$(basename $(SOURCES)))
TEST_OBJS := $(patsubst test/%.cpp,$(B)/test/%.o,$(wildcard test/*.cpp))
HEADERS   := $(wildcard *.h */*.h */*.cuh)

.PHONY: all deps data test bench clean
all: train data

train: $(B)/train.o $(OBJS)
	$(CXX) -o $@ $^ $(LDLIBS)

$(B)/run_tests: $(TEST_OBJS) $(OBJS)
	$(CXX) -o $@ $^ $(LDLIBS)

$(B)/tokenize_bench: $(B)/bench/tokenize_bench.o $(OBJS)
	$(CXX) -o $@ $^ $(LDLIBS)

$(B)/gemv_bench: $(B)/bench/gemv_bench.o $(OBJS)
	$(CXX) -o $@ $^ $(LDLIBS)

$(B)/gemm_bench: $(B)/bench/gemm_bench.o $(OBJS)
	$(CXX) -o $@ $^ $(LDLIBS)

$(B)/%.o: %.cpp $(HEADERS)
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -c -o $@ $<

$(B)/%.o: %.cu $(HEADERS) $(B)/arch.flags
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c -o $@ $<

$(B)/test/%.o: test/%.cpp $(HEADERS) test/test.h
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -c -o $@ $<

deps:
	@bash support/deps.sh

# The default data (tokenizer, corpus, QA set): fetched once; kept when present (GPU machines have no network).
data:
	@test -s data/tokenizer.json -a -f data/corpus/.complete -a -f data/dictionary/.complete -a -s data/llama2_tokenizer.json -a -s data/qwen3_tokenizer.json -a -s data/qwen3_tokenizer_config.json -a -s data/qa_train.jsonl -a -s data/qa_eval.jsonl \
	  || bash data/fetch.sh

test: $(B)/run_tests train data
	./$(B)/run_tests

bench: $(B)/tokenize_bench $(B)/gemv_bench $(B)/gemm_bench data

clean:
	rm -rf $(B) train
