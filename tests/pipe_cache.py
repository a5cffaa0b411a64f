"""Pipelines a test module opens once per (model, options) and closes when the module ends.

    _pipe, _close_pipes = pipe_cache.module_cache()   # _close_pipes: an autouse module fixture
    pipe = _pipe(path, vision_config=...)
"""

import pytest

from seer import pipeline


def module_cache():
    pipes: dict = {}

    def get(path, *args, **kwargs):
        key = (path, repr(args), repr(sorted(kwargs.items())))
        if key not in pipes:
            pipes[key] = pipeline(path, *args, **kwargs)
        return pipes[key]

    @pytest.fixture(scope="module", autouse=True)
    def close_all():
        yield
        for p in pipes.values():
            p.close()
        pipes.clear()

    return get, close_all
