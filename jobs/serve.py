"""`ray job submit` entry point for `laconic serve`: load config -> call the library -> exit code.

    ray job submit --address http://127.0.0.1:8265 --runtime-env jobs/runtime_env.yaml -- \
        python jobs/serve.py conf/serve.yaml index=s3://<bucket>/index model=s3://<bucket>/runs/laconic-1b/phase2/model shard_resource=index_shard replicas=2
"""

import sys

from laconic_ray.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["serve", *sys.argv[1:]]))
