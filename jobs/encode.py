"""`ray job submit` entry point for `laconic encode`: load config -> call the library -> exit code.

    ray job submit --address http://127.0.0.1:8265 --runtime-env jobs/runtime_env.yaml -- \
        python jobs/encode.py conf/encode.yaml model=s3://<bucket>/runs/laconic-1b/phase2/model corpus=s3://<bucket>/corpus/ output=s3://<bucket>/vectors num_actors=16 num_gpus_per_actor=1 dtype=bfloat16
"""

import sys

from laconic_ray.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["encode", *sys.argv[1:]]))
