#!/usr/bin/env python3
"""The workshop table: one markdown row per training run, read from each run's summary.json (written by
./train through write_summary_json in report.h, whose RunSummary lists the keys and their units).

    python3 bench/collect.py RUN_DIR [RUN_DIR ...] [--out table.md]

Columns: run (the directory's name), GPUs, ZeRO stage, offload, final train loss (the last step's), mean
train loss over the run (HF's train_loss), eval loss (the last; every evaluation in parentheses when there
were several), train samples/s per GPU (training steps only), train samples/s of all GPUs over the run's
wall time (HF's train_samples_per_second), eval samples/s (per GPU), steps per epoch, this rank's GPU
memory peak / mean / min (GiB, sampled over time), the whole GPU's in-use memory peak / mean (GiB, what
nvidia-smi shows), the collectives of one step per rank (the last step's: the paper's volume in Psi,
measured / formula, and in GB by kind: all-gather / reduce-scatter / all-reduce; an all-reduce counts
twice, as a reduce-scatter and an all-gather), wall time. A key the summary lacks, or holds as null, prints
as "—". The table goes to stdout, and also to --out when given. A missing or malformed summary.json is
one line `error: ...` naming the file, and exit status 1. Standard library only.
"""
import argparse
import json
import math
import os
import sys

DASH = "—"
NUMBERS = ("world_size", "zero_stage", "lora_rank", "final_train_loss", "mean_train_loss", "steps", "steps_per_epoch",
           "train_samples_per_s", "global_train_samples_per_s", "eval_samples_per_s", "tokens_per_s", "tflops",
           "gpu_peak_gib", "gpu_mean_gib", "gpu_min_gib", "gpu_device_peak_gib", "gpu_device_mean_gib", "seconds",
           "parameters", "comm_step", "comm_psi", "comm_formula_psi", "comm_wire_bytes", "comm_padding_bytes")
KINDS = ("all_gather", "reduce_scatter", "all_reduce")
BY_KIND = ("comm_bytes", "comm_formula_bytes")
BOOLEANS = ("offload", "checkpoint_activations")


def fail(message):
    print("error: " + message, file=sys.stderr)
    sys.exit(1)


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def load(run_dir):
    """The run's summary as a dict, with null and non-finite numbers dropped (they print as "—")."""
    path = os.path.join(run_dir, "summary.json")
    try:
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
    except OSError as e:
        fail("cannot read %s: %s" % (path, e.strerror or e))
    except (ValueError, UnicodeDecodeError) as e:
        fail("%s is not valid JSON: %s" % (path, e))
    if not isinstance(summary, dict):
        fail("%s is not a JSON object" % path)
    for key in NUMBERS:
        if summary.get(key) is not None and not is_number(summary[key]):
            fail('%s: "%s" should be a number' % (path, key))
    for key in BOOLEANS:
        if summary.get(key) is not None and not isinstance(summary[key], bool):
            fail('%s: "%s" should be true or false' % (path, key))
    for key in BY_KIND:
        v = summary.get(key)
        if v is not None and not (isinstance(v, dict) and all(is_number(v.get(k)) for k in KINDS)):
            fail('%s: "%s" should be an object of numbers: %s' % (path, key, ", ".join(KINDS)))
    losses = summary.get("eval_losses")
    if losses is not None and not (isinstance(losses, list) and all(v is None or is_number(v) for v in losses)):
        fail('%s: "eval_losses" should be a list of numbers' % path)
    if losses is not None:
        summary["eval_losses"] = [v for v in losses if v is not None and math.isfinite(v)]
    return {k: v for k, v in summary.items() if v is not None and not (is_number(v) and not math.isfinite(v))}


def duration(seconds):
    """42s, 3m05s, 1h02m, 2d03h (as format_duration in report.h)."""
    if seconds < 0:
        return "?"
    s = math.floor(seconds + 0.5)
    if s < 60:
        return "%ds" % s
    if s < 3600:
        return "%dm%02ds" % (s // 60, s % 60)
    if s < 86400:
        return "%dh%02dm" % (s // 3600, s % 3600 // 60)
    return "%dd%02dh" % (s // 86400, s % 86400 // 3600)


def cell(summary, key, fmt):
    return fmt(summary[key]) if key in summary else DASH


def eval_cell(summary):
    losses = summary.get("eval_losses") or []
    if not losses:
        return DASH
    last = "%.4f" % losses[-1]
    return last if len(losses) == 1 else "%s (%s)" % (last, ", ".join("%.4f" % v for v in losses))


def comm_psi_cell(s):
    if "comm_psi" not in s:
        return DASH
    return "%.3g / %s" % (s["comm_psi"], "%.3g" % s["comm_formula_psi"] if "comm_formula_psi" in s else DASH)


def comm_bytes_cell(s):
    if "comm_bytes" not in s:
        return DASH
    return " / ".join("%.3f" % (s["comm_bytes"][k] / 1e9) for k in KINDS)


def row(run_dir, s):
    name = os.path.basename(os.path.normpath(run_dir)).replace("|", "\\|")
    memory = " / ".join(cell(s, k, lambda v: "%.2f" % v) for k in ("gpu_peak_gib", "gpu_mean_gib", "gpu_min_gib"))
    device = " / ".join(cell(s, k, lambda v: "%.2f" % v) for k in ("gpu_device_peak_gib", "gpu_device_mean_gib"))
    return [name,
            cell(s, "world_size", lambda v: "%d" % v),
            cell(s, "zero_stage", lambda v: "%d" % v),
            cell(s, "offload", lambda v: "yes" if v else "no"),
            cell(s, "final_train_loss", lambda v: "%.4f" % v),
            cell(s, "mean_train_loss", lambda v: "%.4f" % v),
            eval_cell(s),
            cell(s, "train_samples_per_s", lambda v: "%.1f" % v),
            cell(s, "global_train_samples_per_s", lambda v: "%.1f" % v),
            cell(s, "eval_samples_per_s", lambda v: "%.1f" % v),
            cell(s, "steps_per_epoch", lambda v: "%d" % v),
            memory,
            device,
            comm_psi_cell(s),
            comm_bytes_cell(s),
            cell(s, "seconds", duration)]


HEADER = ["run", "GPUs", "ZeRO stage", "offload", "final train loss", "train loss, mean (HF)", "eval loss",
          "train samples/s per GPU", "train samples/s, all GPUs (HF)", "eval samples/s", "steps/epoch",
          "GPU memory peak / mean / min (GiB)", "whole GPU peak / mean (GiB)",
          "collectives/step (Psi, measured / formula)", "GB/step: all-gather / reduce-scatter / all-reduce", "time"]
ALIGN = [":---", "---:", "---:", ":---:"] + ["---:"] * (len(HEADER) - 4)


def table(run_dirs):
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(ALIGN) + "|"]
    for d in run_dirs:
        lines.append("| " + " | ".join(row(d, load(d))) + " |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description="One markdown table row per run directory (its summary.json).")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args()
    text = table(args.runs)
    sys.stdout.write(text)
    if args.out:
        try:
            with open(args.out, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            fail("cannot write %s: %s" % (args.out, e.strerror or e))


if __name__ == "__main__":
    main()
