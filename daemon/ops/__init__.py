"""Running as a service: logging, sd_notify, install helpers."""
