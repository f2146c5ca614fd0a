"""`nnx.deprecations`: `deprecated(new_fn)`, an alias of a renamed function that warns."""

from __future__ import annotations

import functools
import typing as tp
import warnings

F = tp.TypeVar("F", bound=tp.Callable[..., tp.Any])


def deprecated(new_fn: F) -> F:
    """A wrapper of `new_fn` (same name, signature, docstring with a deprecation
    notice) that emits a `DeprecationWarning` naming `new_fn` on every call.

    >>> old = deprecated(abs)
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     old(-2), caught[0].category.__name__
    (2, 'DeprecationWarning')
    """

    @functools.wraps(new_fn)
    def wrapper(*args: object, **kwargs: tp.Any) -> tp.Any:
        warnings.warn(
            f"This function is deprecated. Use {new_fn.__qualname__} instead.",
            DeprecationWarning,
            stacklevel=2,
        )
        return new_fn(*args, **kwargs)

    wrapper.__doc__ = f".. deprecated::\n   Use :func:`{new_fn.__qualname__}` instead.\n\n" + (
        new_fn.__doc__ or ""
    )
    return tp.cast(F, wrapper)
