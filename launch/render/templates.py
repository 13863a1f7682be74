"""The jinja2 environment over the templates shipped in ``launch/render/templates``."""

from __future__ import annotations

from functools import lru_cache

import jinja2


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    # Scripts and YAML, not HTML: no autoescaping; an undefined name is a bug, not an empty string.
    return jinja2.Environment(
        loader=jinja2.PackageLoader("launch.render", "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render_template(template: str, **values) -> str:
    return environment().get_template(template).render(**values)
