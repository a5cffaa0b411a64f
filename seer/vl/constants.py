"""Constants shared by the vision-language front end.

``IMAGE_TOKEN`` keeps LMDeploy's value so prompts written for it place images
the same way here: ``pipe((f"describe{IMAGE_TOKEN}this", image))``.
"""

IMAGE_TOKEN = "<IMAGE_TOKEN>"

# Environment variable holding the timeout, in seconds, for fetching http(s) images.
IMAGE_FETCH_TIMEOUT_ENV = "SEER_IMAGE_FETCH_TIMEOUT"
DEFAULT_IMAGE_FETCH_TIMEOUT = 10.0

# Bounds on one image or video source (MediaPolicy's defaults; the server's flags override them):
# encoded bytes fetched or read, and width * height of a decoded image (8192 x 8192; its RGB
# pixels take 192 MiB), checked from the header before decoding.
DEFAULT_MAX_MEDIA_BYTES = 64 << 20
DEFAULT_MAX_IMAGE_PIXELS = 8192 * 8192

# Sent with every image fetch; some hosts refuse requests without a User-Agent.
IMAGE_FETCH_USER_AGENT = "Mozilla/5.0 (compatible; seer-image-fetch/1.0)"

__all__ = [
    "IMAGE_TOKEN", "IMAGE_FETCH_TIMEOUT_ENV", "DEFAULT_IMAGE_FETCH_TIMEOUT", "IMAGE_FETCH_USER_AGENT",
    "DEFAULT_MAX_MEDIA_BYTES", "DEFAULT_MAX_IMAGE_PIXELS",
]
