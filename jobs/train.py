"""`ray job submit` entry point for `laconic train`: load config -> call the library -> exit code.

    ray job submit --address http://127.0.0.1:8265 --runtime-env jobs/runtime_env.yaml -- \
        python jobs/train.py conf/train/llama3-1b.yaml output=s3://<bucket>/runs/laconic-1b phase1.data=s3://<bucket>/data/weak phase2.data=s3://<bucket>/data/negatives
"""

import sys

from laconic_ray.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["train", *sys.argv[1:]]))
