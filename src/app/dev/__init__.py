"""Development-only world around Pulse (`python -m app dev`). Never imported in production."""
