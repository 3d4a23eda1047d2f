"""The public surface: what is exported, and how the errors are arranged."""

from __future__ import annotations

import pickle

import siliconflow_video as sv


def test_all_is_complete_and_sorted() -> None:
    """Every public name in the package is in __all__, which is sorted."""
    public = {name for name in dir(sv) if not name.startswith("_")}
    assert public <= set(sv.__all__) | {"testing", "worker"}  # public submodules
    assert sv.__all__ == sorted(sv.__all__)
    for name in sv.__all__:
        assert getattr(sv, name) is not None


def test_error_tree() -> None:
    """Errors share one root; job, request and download failures stay apart."""
    for name in sv.__all__:
        obj = getattr(sv, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, sv.SiliconFlowError), name
    assert not issubclass(sv.JobFailedError, sv.APIError)
    assert not issubclass(sv.DownloadError, sv.APIError)
    assert issubclass(sv.WaitTimeoutError, TimeoutError)
    assert issubclass(sv.APITimeoutError, TimeoutError)
    assert issubclass(sv.VideoURLExpiredError, sv.DownloadError)
    assert issubclass(sv.OverloadedError, sv.ServerError)
    assert issubclass(sv.ConfigurationError, ValueError)


def test_errors_survive_pickling() -> None:
    """Errors cross process boundaries (multiprocessing, logging queues) intact."""
    err = sv.RateLimitError("slow down", status_code=429, code=50603, request_id="r1")
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is sv.RateLimitError
    assert (copy.status_code, copy.code, copy.request_id) == (429, 50603, "r1")
    assert str(copy) == str(err)
    failed = pickle.loads(pickle.dumps(sv.JobFailedError("r2", "nsfw")))
    assert failed.reason == "nsfw"
