"""ComfyUI nodes (V3 schema). Thin glue: every node parses inputs and calls ip_adapter_core."""
from comfy_api.latest import ComfyExtension, io
from typing_extensions import override

from .apply import IPAApply, IPAApplySimple
from .attention_map import IPAAttentionMap
from .combine import IPACombineEmbeds, IPACombineFeatures
from .embeds_files import IPALoadEmbeds, IPASaveEmbeds
from .faces import IPAFaceAnalysis, IPAFaceAnalysisLoader, IPAFaceID, IPAProjectFace
from .features_files import IPALoadFeatures, IPASaveFeatures
from .frames import IPAFrames, IPAFrameWeights, IPAJoinFrameWeights, IPAPromptSchedule
from .image_prompt import IPAEncodeImage, IPAProject
from .loaders import IPACLIPVisionLoader, IPALoader
from .presets import IPAUnifiedLoader, IPAUnifiedLoaderFaceID
from .references import IPANoiseNegative, IPAPrepareReference
from .tiles import IPAApplyTiled, IPAEncodeEnhanced
from .training import IPASaveAdapterNode, IPATrainingSetNode, IPATrainNode
from .weight import IPASchedule, IPAWeight

NODES = [IPALoader, IPACLIPVisionLoader, IPAEncodeImage, IPAProject, IPAWeight, IPASchedule, IPAApply,
         IPAApplySimple, IPASaveEmbeds, IPALoadEmbeds, IPASaveFeatures, IPALoadFeatures, IPACombineFeatures,
         IPACombineEmbeds, IPATrainingSetNode, IPATrainNode, IPASaveAdapterNode, IPAUnifiedLoader,
         IPAPrepareReference, IPANoiseNegative, IPAEncodeEnhanced, IPAApplyTiled, IPAFrames, IPAFrameWeights,
         IPAJoinFrameWeights, IPAPromptSchedule, IPAAttentionMap, IPAFaceAnalysisLoader, IPAFaceAnalysis,
         IPAProjectFace, IPAFaceID, IPAUnifiedLoaderFaceID]


class IPAdapterExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES
