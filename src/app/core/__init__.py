"""The shared kernel: settings, database, HTTP client, errors, logging, metrics. No business
rules, and no import of any module (checked by `make lint`)."""
