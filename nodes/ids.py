"""How the ids and names in a design are spelled: one rule for steps, areas, elements, units and metrics."""

from __future__ import annotations

import re

# lower_snake_case: a lower-case letter, then lower-case letters, digits and underscores.
SNAKE_ID = re.compile(r"^[a-z][a-z0-9_]*$")
