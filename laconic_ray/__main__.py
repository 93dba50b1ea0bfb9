"""``python -m laconic_ray`` is the ``laconic`` command."""

from laconic_ray.cli import main

raise SystemExit(main())
