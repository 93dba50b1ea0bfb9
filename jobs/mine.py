"""`ray job submit` entry point for `laconic mine`: load config -> call the library -> exit code.

    ray job submit --address http://127.0.0.1:8265 --runtime-env jobs/runtime_env.yaml -- \
        python jobs/mine.py conf/mine.yaml dataset=s3://<bucket>/beir/msmarco output=s3://<bucket>/data/negatives phase=2
"""

import sys

from laconic_ray.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["mine", *sys.argv[1:]]))
