"""`ray job submit` entry point for `laconic index`: load config -> call the library -> exit code.

    ray job submit --address http://127.0.0.1:8265 --runtime-env jobs/runtime_env.yaml -- \
        python jobs/index.py conf/index.yaml input=s3://<bucket>/vectors output=s3://<bucket>/index num_shards=24
"""

import sys

from laconic_ray.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["index", *sys.argv[1:]]))
