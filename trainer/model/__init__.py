"""Cascade R-CNN graph (tensorpack / TF1-style graph mode), one concept per module.

``box_ops`` (IoU, box encoding, clipping) -> ``layers`` (conv / fc variables)
-> ``norm`` (GroupNorm, frozen BatchNorm) -> ``backbone`` (ResNet/ResNeXt C2-C5)
-> ``fpn`` (P2-P6) -> ``rpn`` (head, losses, proposals) -> ``sampling``
(proposal <-> gt matching) -> ``poolers`` (multilevel RoIAlign) -> ``box_head``
(2fc head, outputs, losses) -> ``cascade`` (3 stages) -> ``postprocessing``
(score threshold, NMS) -> ``detector`` (the ``ModelDesc`` assembly).

Import ``trainer`` before this package so legacy Keras is selected.
"""
