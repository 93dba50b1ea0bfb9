#!/usr/bin/env bash
# The GPU path once, on one node with all its GPUs (cannot run on our CPU-only machines). From the checkout:
#
#   HF_TOKEN=hf_... LACONIC_DATA=/data/beir bash benchmarks/gpu_smoke.sh        # < 10 min on one 80 GB GPU
#
# Llama-3.2-1B (gated: HF_TOKEN, or MODEL=<local folder>) at the 1B preset's shapes per GPU: mine weak pairs
# and hard negatives from $DATASET, phase 1 and phase 2 for 20 steps each over NCCL (FSDP2 + LoRA + bf16 +
# gradient checkpointing), a worker killed at phase 1 step 10 and the phase resumed from its checkpoint, both
# exports, then 10,000 passages encoded on the GPUs. The last line is JSON: wall time per stage, each
# phase's peak GPU memory (torch's allocator) beside `laconic plan`'s estimate, and the resume's evidence.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/laconic-gpu-smoke}
DATASET=${DATASET:-scifact}
MODEL=${MODEL:-meta-llama/Llama-3.2-1B}
LACONIC=${LACONIC:-.venv/bin/laconic}
NGPU=$(nvidia-smi -L | wc -l)
rm -rf "$OUT" && mkdir -p "$OUT"
now() { date +%s.%N; }
last_json() { tail -n 1 "$1"; }

t0=$(now)
$LACONIC mine conf/mine.yaml dataset="$DATASET" output="$OUT/weak" phase=1 max_pairs=20000 | tee "$OUT/mine1.log"
$LACONIC mine conf/mine.yaml dataset="$DATASET" output="$OUT/neg" phase=2 | tee "$OUT/mine2.log"
t1=$(now)

# the 1B preset per GPU (64 queries per phase-1 micro-step, 4 x 16 passages in phase 2), world = this node
TRAIN=(conf/train/llama3-1b.yaml output="$OUT/run" model.name_or_path="$MODEL"
  phase1.data="$OUT/weak" phase2.data="$OUT/neg" scaling.num_workers="$NGPU"
  phase1.num_workers="$NGPU" phase1.steps=20 phase1.queries_per_step=$((NGPU * 64))
  phase2.num_workers="$NGPU" phase2.steps=20 phase2.queries_per_step=$((NGPU * 4))
  checkpoint_every=5 max_failures=2 log_every=5)
# phase 1 dies once at step 10 (the process exits: Ray Train restarts the workers from step 10's checkpoint)
LACONIC_FAULT_INJECT="train:1:10:$OUT/killed-once:kill" $LACONIC train "${TRAIN[@]}" | tee "$OUT/train.log"
t2=$(now)
$LACONIC plan "${TRAIN[@]}" | tee "$OUT/plan.log"

# 10,000 passages: the collection's corpus, repeated under new ids if it is smaller
.venv/bin/python - "$DATASET" "$OUT/corpus.jsonl" <<'PY'
import itertools, json, sys
from laconic_ray.data.beir import BeirDataset
docs = list(BeirDataset(sys.argv[1]).corpus())
with open(sys.argv[2], "w") as f:
    for i, d in zip(range(10_000), itertools.cycle(docs)):
        f.write(json.dumps({"_id": f"{d.id}-{i}", "title": d.title, "text": d.text}) + "\n")
PY
$LACONIC encode conf/encode.yaml model="$OUT/run/phase2/model" corpus="$OUT/corpus.jsonl" output="$OUT/vectors" \
  num_actors="$NGPU" num_gpus_per_actor=1 dtype=bfloat16 batch_size=128 | tee "$OUT/encode.log"
t3=$(now)

.venv/bin/python - "$OUT" "$t0" "$t1" "$t2" "$t3" <<'PY'
import json, os, sys
out, t0, t1, t2, t3 = sys.argv[1], *map(float, sys.argv[2:])
train = json.loads(open(f"{out}/train.log").read().strip().splitlines()[-1])
plan = json.loads(open(f"{out}/plan.log").read().strip().splitlines()[-1])
encode = json.loads(open(f"{out}/encode.log").read().strip().splitlines()[-1])
planned = {p["phase"]: p["total_gb"] for p in plan["phases"]}
print(json.dumps({
    "gpus": int(os.popen("nvidia-smi -L | wc -l").read()),
    "seconds": {"mine": round(t1 - t0), "train": round(t2 - t1), "encode": round(t3 - t2), "total": round(t3 - t0)},
    "phases": [
        {"phase": p["phase"], "seconds": p.get("seconds"), "peak_gpu_gb": p["worker"].get("peak_gpu_gb"),
         "plan_gb": planned.get(p["phase"]), "loss_first": p.get("loss_first"), "loss_last": p.get("loss_last")}
        for p in train["phases"]
    ],
    "resumed_after_kill": os.path.exists(f"{out}/killed-once"),
    "encoded": encode.get("documents"), "encode_docs_per_s": encode.get("docs_per_s"),
}))
PY
