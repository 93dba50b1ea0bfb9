"""`ray job submit` entry point for `laconic eval`: load config -> call the library -> exit code.

    ray job submit --address http://127.0.0.1:8265 --runtime-env jobs/runtime_env.yaml -- \
        python jobs/evaluate.py conf/eval.yaml dataset=s3://<bucket>/beir/scifact service=http://127.0.0.1:8000
"""

import sys

from laconic_ray.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["eval", *sys.argv[1:]]))
