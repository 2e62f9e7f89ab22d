"""Exception types. Each carries a message a user can act on."""

# Every status a score row can have: `ok`, or the `status` of one of the ImageError classes below.
STATUSES = ("ok", "decode_error", "unsupported", "too_large", "read_error")


class PiqaError(Exception):
    """Base class for every error this project raises on purpose."""


class ConfigError(PiqaError, ValueError):
    """A configuration value is invalid."""


class ImageError(PiqaError):
    """An input image cannot be scored. `status` is the output-row status it maps to."""

    status = "decode_error"


class ImageDecodeError(ImageError):
    status = "decode_error"


class UnsupportedImageError(ImageError):
    status = "unsupported"


class ImageTooLargeError(ImageError):
    status = "too_large"


class ImageReadError(ImageError):
    """The image's bytes could not be read from its source."""

    status = "read_error"


class WeightsError(PiqaError):
    """A checkpoint or bundle cannot be loaded."""


class WeightsUnavailableError(WeightsError):
    """Pretrained weights could not be fetched (offline, or no access to the hub)."""
