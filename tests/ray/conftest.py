"""The Ray tier uses the session cluster fixture ``ray_session`` of tests/conftest.py."""
