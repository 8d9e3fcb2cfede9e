"""Socket types of this extension. Distinct names, so they cannot be wired to a
look-alike type from another IP-Adapter extension."""
from comfy_api.latest import io

IPAModel = io.Custom("IPA_MODEL")
IPAEmbeds = io.Custom("IPA_EMBEDS")
CATEGORY = "ipadapter"
