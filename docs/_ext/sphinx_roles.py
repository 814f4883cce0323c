"""A griffe extension for the API reference: the docstrings cross-reference with Sphinx roles
(``:class:`convac.model.ConvAC```, ``:func:`~convac.kernels.pin```), which Markdown shows
literally; each role becomes inline code of its target (the last part for ``~`` targets)."""
from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|exc|obj):`(~?)([^`]+)`")


def _plain(match: re.Match) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


class SphinxRoles(griffe.Extension):
    """Rewrites the roles of every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_plain, obj.docstring.value)
