"""A YOLO-style one-stage detector in plain PyTorch (no torchvision).

Layout (YOLOv8-like, small widths): a CSP backbone of ``Conv(k3, s2) -> C2f`` stages ending in
SPPF, a PAN neck (top-down upsample + concat + C2f, bottom-up ``Conv(s2)`` + concat + C2f) and a
decoupled head per level (box branch: two 3x3 convs then a 1x1 to 4 distances; class branch: two
3x3 convs then a 1x1 to ``num_classes`` logits). ``Conv`` is conv -> BatchNorm -> SiLU; C2f (CSP)
computes two halves with two 1x1 convs, runs ``n`` residual bottlenecks on the second,
concatenates every intermediate and mixes them with a 1x1 ``cv3``.

``forward(images)`` takes what torchvision detectors take, a list of 3-D ``[3, H, W]`` images,
and returns one dict per image with ``boxes`` ``[k, 4]`` (x1, y1, x2, y2 in input pixels),
``scores`` ``[k]`` and ``labels`` ``[k]``. Around the tensor program (backbone, neck, head) is the
Python glue real detectors have: normalize and pad the images into one batch, decode the
distances against a grid of anchor points, keep scores above ``score_thresh`` (a data-dependent
mask), top-k, and a greedy class-aware NMS loop written in torch (a ``while`` over a tensor whose
length depends on the data), so ``torch.export`` cannot capture ``forward`` whole, as it cannot a
torchvision detector.

Boxes from a point ``(cx, cy)`` of stride ``s`` and distances ``(l, t, r, b) = softplus(d) * s``
are ``(cx - l, cy - t, cx + r, cy + b)``; the score is ``sigmoid(logit)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ._common import calibrate_batchnorm, randomize_norm_affine, seeded

__all__ = ["YOLO", "build_yolo", "nms"]


class Conv(nn.Module):
    """conv -> BatchNorm -> SiLU."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.cv1 = Conv(c, c, 3)
        self.cv2 = Conv(c, c, 3)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.cv2(self.cv1(x))


class C2f(nn.Module):
    """Two 1x1 convs (the CSP halves) -> n bottlenecks on the second -> concat all -> 1x1 ``cv3``."""

    def __init__(self, c_in: int, c_out: int, n: int = 1) -> None:
        super().__init__()
        c = c_out // 2
        self.cv1 = Conv(c_in, c, 1)
        self.cv2 = Conv(c_in, c, 1)
        self.m = nn.ModuleList(Bottleneck(c) for _ in range(n))
        self.cv3 = Conv((2 + n) * c, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        ys = [self.cv1(x), self.cv2(x)]
        for m in self.m:
            ys.append(m(ys[-1]))
        return self.cv3(torch.cat(ys, 1))


class SPPF(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.cv1 = Conv(c_in, c_in // 2, 1)
        self.cv2 = Conv(c_in * 2, c_out, 1)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.pool(y[-1]))
        return self.cv2(torch.cat(y, 1))


class Backbone(nn.Module):
    """Stem and four stride-2 stages; returns the stride 8, 16 and 32 features."""

    def __init__(self, w: tuple[int, ...], n: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(Conv(3, w[0], 3, 2), Conv(w[0], w[1], 3, 2), C2f(w[1], w[1], n))
        self.p3 = nn.Sequential(Conv(w[1], w[2], 3, 2), C2f(w[2], w[2], n))
        self.p4 = nn.Sequential(Conv(w[2], w[3], 3, 2), C2f(w[3], w[3], n))
        self.p5 = nn.Sequential(Conv(w[3], w[4], 3, 2), C2f(w[4], w[4], n), SPPF(w[4], w[4]))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        p3 = self.p3(self.stem(x))
        p4 = self.p4(p3)
        return p3, p4, self.p5(p4)


class PAN(nn.Module):
    """Top-down then bottom-up feature pyramid (upsample / stride-2 conv, concat, C2f)."""

    def __init__(self, w: tuple[int, ...], n: int) -> None:
        super().__init__()
        self.td4 = C2f(w[4] + w[3], w[3], n)
        self.td3 = C2f(w[3] + w[2], w[2], n)
        self.down3 = Conv(w[2], w[2], 3, 2)
        self.bu4 = C2f(w[2] + w[3], w[3], n)
        self.down4 = Conv(w[3], w[3], 3, 2)
        self.bu5 = C2f(w[3] + w[4], w[4], n)

    def forward(self, feats: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        p3, p4, p5 = feats
        t4 = self.td4(torch.cat([F.interpolate(p5, scale_factor=2.0, mode="nearest"), p4], 1))
        n3 = self.td3(torch.cat([F.interpolate(t4, scale_factor=2.0, mode="nearest"), p3], 1))
        n4 = self.bu4(torch.cat([self.down3(n3), t4], 1))
        n5 = self.bu5(torch.cat([self.down4(n4), p5], 1))
        return n3, n4, n5


class DecoupledHead(nn.Module):
    """Per level: a box branch (4 distances) and a class branch (``num_classes`` logits)."""

    def __init__(self, chans: tuple[int, int, int], num_classes: int, hidden: int) -> None:
        super().__init__()
        self.box = nn.ModuleList(
            nn.Sequential(Conv(c, hidden, 3), Conv(hidden, hidden, 3), nn.Conv2d(hidden, 4, 1)) for c in chans)
        self.cls = nn.ModuleList(
            nn.Sequential(Conv(c, hidden, 3), Conv(hidden, hidden, 3), nn.Conv2d(hidden, num_classes, 1)) for c in chans)

    def forward(self, feats: tuple[Tensor, ...]) -> list[tuple[Tensor, Tensor]]:
        return [(b(f), c(f)) for f, b, c in zip(feats, self.box, self.cls, strict=True)]


def nms(boxes: Tensor, scores: Tensor, iou_thresh: float, max_keep: int = 100) -> Tensor:
    """Greedy NMS in torch: indices of at most ``max_keep`` kept boxes, by decreasing score."""
    order = scores.argsort(descending=True)
    keep: list[Tensor] = []
    while order.numel() > 0:
        i = order[0]
        keep.append(i)
        if order.numel() == 1 or len(keep) == max_keep:
            break
        rest = order[1:]
        lt = torch.maximum(boxes[i, :2], boxes[rest, :2])
        rb = torch.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = (rb - lt).clamp(min=0).prod(1)
        area = (boxes[:, 2:] - boxes[:, :2]).prod(1)
        iou = inter / (area[i] + area[rest] - inter)
        order = rest[iou <= iou_thresh]
    return torch.stack(keep) if keep else torch.zeros(0, dtype=torch.long)


class YOLO(nn.Module):
    strides = (8, 16, 32)

    def __init__(self, num_classes: int = 20, width: tuple[int, ...] = (16, 32, 64, 128, 256), depth: int = 1,
                 head_hidden: int = 64, score_thresh: float = 0.25, iou_thresh: float = 0.6,
                 detections_per_img: int = 100, topk_candidates: int = 1000) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.backbone = Backbone(width, depth)
        self.neck = PAN(width, depth)
        self.head = DecoupledHead((width[2], width[3], width[4]), num_classes, head_hidden)
        self.score_thresh, self.iou_thresh = score_thresh, iou_thresh
        self.detections_per_img, self.topk_candidates = detections_per_img, topk_candidates
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1), persistent=False)

    def batch_images(self, images: list[Tensor]) -> Tensor:
        """Normalize and zero-pad to one ``[N, 3, H, W]`` batch, H and W multiples of 32."""
        if isinstance(images, Tensor) or not isinstance(images, (list, tuple)):
            shape = f" of shape {tuple(images.shape)}" if isinstance(images, Tensor) else ""
            raise ValueError(f"YOLO expects a list of 3-D images [3, H, W], got a {type(images).__name__}{shape}; "
                             "pass list(batch)")
        for img in images:
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(f"YOLO expects 3-D images [3, H, W], got one of shape {tuple(img.shape)}")
        h = max(int(img.shape[1]) for img in images)
        w = max(int(img.shape[2]) for img in images)
        h, w = -(-h // 32) * 32, -(-w // 32) * 32
        batch = images[0].new_zeros(len(images), 3, h, w)
        for i, img in enumerate(images):
            batch[i, :, : img.shape[1], : img.shape[2]] = (img - self.mean) / self.std
        return batch

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        x = self.batch_images(images)
        preds = self.head(self.neck(self.backbone(x)))
        boxes, logits = self.decode(preds)
        sizes = [(int(img.shape[1]), int(img.shape[2])) for img in images]
        return [self.postprocess(b, s, size) for b, s, size in zip(boxes, logits.sigmoid(), sizes, strict=True)]

    def decode(self, preds: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """Head outputs -> boxes ``[N, A, 4]`` in pixels and logits ``[N, A, num_classes]``."""
        all_boxes, all_logits = [], []
        for (dist, logit), stride in zip(preds, self.strides, strict=True):
            n, _, h, w = dist.shape
            ys, xs = torch.meshgrid(torch.arange(h, dtype=dist.dtype), torch.arange(w, dtype=dist.dtype), indexing="ij")
            centers = (torch.stack([xs, ys], -1).reshape(1, h * w, 2) + 0.5) * stride
            d = F.softplus(dist).flatten(2).transpose(1, 2) * stride
            all_boxes.append(torch.cat([centers - d[..., :2], centers + d[..., 2:]], -1))
            all_logits.append(logit.flatten(2).transpose(1, 2))
        return torch.cat(all_boxes, 1), torch.cat(all_logits, 1)

    def postprocess(self, boxes: Tensor, scores: Tensor, size: tuple[int, int]) -> dict[str, Tensor]:
        """Threshold, top-k, class-aware NMS (boxes offset per class), clip to the image."""
        flat = scores.flatten()
        cand = torch.nonzero(flat > self.score_thresh).squeeze(1)
        cand = cand[flat[cand].argsort(descending=True)[: self.topk_candidates]]
        anchor, label = cand // self.num_classes, cand % self.num_classes
        b = boxes[anchor]
        b = torch.stack([b[:, 0].clamp(0, size[1]), b[:, 1].clamp(0, size[0]),
                         b[:, 2].clamp(0, size[1]), b[:, 3].clamp(0, size[0])], 1)
        offset = label.to(b.dtype).unsqueeze(1) * (max(size) + 1)
        keep = nms(b + offset, flat[cand], self.iou_thresh, self.detections_per_img)
        return {"boxes": b[keep], "scores": flat[cand][keep], "labels": label[keep]}


def build_yolo(num_classes: int = 20, image_size: int = 128, images: int = 1, width: float = 1.0,
               score_thresh: float = 0.25) -> tuple[YOLO, tuple[list[Tensor]]]:
    """YOLO with a fixed-seed init (BatchNorm statistics calibrated on random data) and example
    inputs ``([image, ...],)`` of ``images`` random ``[3, image_size, image_size]`` images."""
    base = (16, 32, 64, 128, 256)
    with seeded(0):
        model = YOLO(num_classes, tuple(max(8, int(c * width)) for c in base), score_thresh=score_thresh)
        randomize_norm_affine(model)
        with torch.no_grad():  # a head bias that makes some scores pass the threshold
            for seq in model.head.cls:
                seq[-1].bias.fill_(-1.5)
        calibrate_batchnorm(_Batched(model), lambda: (torch.randn(2, 3, image_size, image_size),))
        example = ([torch.rand(3, image_size, image_size) for _ in range(images)],)
    return model.eval(), example


class _Batched(nn.Module):
    """The tensor program of a YOLO on a ready batch (for BatchNorm calibration)."""

    def __init__(self, yolo: YOLO) -> None:
        super().__init__()
        self.yolo = yolo

    def forward(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        return self.yolo.head(self.yolo.neck(self.yolo.backbone(x)))
