"""Fuzz-test support: a compatibility shim between the pinned hypothesis and hypothesis-jsonschema.

hypothesis-jsonschema 0.23.1 (schemathesis' object-schema generator) drives
`hypothesis.internal.conjecture.utils.many` through `.more()`, which hypothesis 6.170 replaced with the
`with many(...) as elements: for _ in elements:` protocol. Without `.more()` every object schema fails
to generate ("'many' object has no attribute 'more'"). The shim below is the old method expressed in the
new class's own steps; it is installed only when the method is missing, and can go once the pins agree.
"""

from __future__ import annotations

from hypothesis.internal.conjecture import utils as _cu

if not hasattr(_cu.many, "more"):

    def _more(self: _cu.many) -> bool:
        """Whether to draw one more element (the pre-6.170 `many.more()`)."""
        if self._depth is None:  # first call: what `__enter__` and `__iter__` record
            self._depth = self.data.depth
            self._iterated = True
        if self._in_element:
            self._finish_element()
        if not self._decide():
            self._closed = True
            return False
        self.count += 1
        self._in_element = True
        self._rejected = False
        return True

    _cu.many.more = _more
