"""Face analysis for the FaceID adapters, without the insightface package: the detector (SCRFD) and recogniser
(ArcFace) ONNX files of the packs users already have in ``models/insightface/models/<pack>/`` (buffalo_l,
antelopev2), run with onnxruntime. ``packs`` finds a pack's files, ``detect`` decodes the detector, ``align``
makes the template crops, ``analysis`` puts them together into a ``face_set.FaceSet``, ``draw`` shows what was
found. The maths follows insightface's python-package (model_zoo/scrfd.py, arcface_onnx.py, utils/face_align.py),
transcribed from its formulas; see FAMILIES.md §1.5 and docs/faceid.md.
"""
