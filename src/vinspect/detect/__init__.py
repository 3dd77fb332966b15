"""Defect detection with boxes: annotations (Pascal VOC, YOLO, COCO -> one internal form), the detector
(torchvision's FCOS + FPN on a registry backbone), training with the shared loop, repeated-split evaluation with
mAP (torchmetrics on pycocotools), pictures.  The bundle and its predictor are ``vinspect.models.detect``."""
