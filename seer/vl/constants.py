"""Constants shared by the vision-language front end.

``IMAGE_TOKEN`` keeps LMDeploy's value so prompts written for it place images
the same way here: ``pipe((f"describe{IMAGE_TOKEN}this", image))``.
"""

IMAGE_TOKEN = "<IMAGE_TOKEN>"

# Environment variable holding the timeout, in seconds, for fetching http(s) images.
IMAGE_FETCH_TIMEOUT_ENV = "SEER_IMAGE_FETCH_TIMEOUT"
DEFAULT_IMAGE_FETCH_TIMEOUT = 10.0

# Sent with every image fetch; some hosts refuse requests without a User-Agent.
IMAGE_FETCH_USER_AGENT = "Mozilla/5.0 (compatible; seer-image-fetch/1.0)"

__all__ = [
    "IMAGE_TOKEN", "IMAGE_FETCH_TIMEOUT_ENV", "DEFAULT_IMAGE_FETCH_TIMEOUT", "IMAGE_FETCH_USER_AGENT",
]
