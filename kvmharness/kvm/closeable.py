"""Context-manager and finaliser behaviour shared by everything that owns a kernel resource
(an fd, an mmap): ``with`` closes it, and a dropped object closes itself as a last resort."""

from __future__ import annotations

from typing import TypeVar

_Self = TypeVar("_Self", bound="Closeable")


class Closeable:
    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Never raise from a finaliser: the interpreter may be half torn down.
        try:
            self.close()
        except Exception:
            pass
