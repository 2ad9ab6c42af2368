"""Regenerate schemas/templates/*.json from schemas/access_fields.json."""

from schemas import write_templates

write_templates()
