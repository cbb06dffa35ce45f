"""PyTorch reference for `bcl bench`: the identical default model and training step.

Model: ResNet-style backbone (stem conv3x3 -> 3 stages of basic blocks, widths w, 2w, 4w,
stride 2 at stages 2 and 3) -> global average pool -> linear to d -> L2 normalisation,
cosine classifier with scale s and an additive cosine (CosFace, the default) or angular (ArcFace)
margin m; SGD with momentum
0.9, weight decay 5e-4, Nesterov off. Prints JSON with images/s.
"""
import argparse, json, math, time
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(y))
        s = x if self.short is None else self.short(x)
        return F.relu(y + s)


class Net(nn.Module):
    def __init__(self, width, blocks, dim, classes, in_ch=1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_ch, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, cin = [], width
        for s in range(3):
            cout = width * 2 ** s
            for b in range(blocks):
                layers.append(Block(cin, cout, 2 if (s > 0 and b == 0) else 1))
                cin = cout
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(cin, dim)
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))

    def features(self, x):
        return self.body(self.stem(x))

    def embed(self, h):
        """Pooling (accumulated in float32) and the embedding head, from the last feature map."""
        return F.normalize(self.head(h.float().mean(dim=(2, 3))), dim=1)

    def forward(self, x):
        return self.embed(self.features(x))


def cosface_logits(f, w, y, s, m):
    cos = f @ F.normalize(w, dim=1).t()
    cos = cos.clamp(-1.0, 1.0)
    onehot = torch.zeros_like(cos).scatter_(1, y[:, None], 1.0)
    return s * (cos - onehot * m)


def arcface_logits(f, w, y, s, m):
    cos = f @ F.normalize(w, dim=1).t()
    # Same formula as bcl's ArcFace head: cos(θ+m) = cos·cos m − sin·sin m, falling back to
    # cos − m·sin m where θ + m > π.
    cos = cos.clamp(-1.0, 1.0)
    onehot = torch.zeros_like(cos).scatter_(1, y[:, None], 1.0)
    sin = (1.0 - cos * cos).clamp_min(1e-9).sqrt()
    phi = cos * math.cos(m) - sin * math.sin(m)
    phi = torch.where(cos > math.cos(math.pi - m), phi, cos - m * math.sin(m))
    return s * (cos + onehot * (phi - cos))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--blocks", type=int, default=1)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--scale", type=float, default=16.0)
    ap.add_argument("--margin", type=float, default=0.2)
    ap.add_argument("--head", choices=["cosface", "arcface"], default="cosface")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--embed", action="store_true",
                    help="time the embedding pass (eval mode under torch.inference_mode())")
    ap.add_argument("--autocast", choices=["off", "bf16"], default="off",
                    help="the network's forward under torch.autocast to bfloat16 (as bcl's [exec] autocast)")
    ap.add_argument("--channels-last", action="store_true",
                    help="model and input in torch.channels_last (as bcl's [exec] channels_last)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    net = Net(a.width, a.blocks, a.dim, a.classes).to(dev)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(a.batch, 1, 28, 28, device=dev)
    y = torch.randint(0, a.classes, (a.batch,), device=dev)
    if a.channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    def forward(x):
        # the backbone under autocast, pooling and embedding head in float32 (as bcl's
        # EmbeddingNet::forward_exec)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.autocast == "bf16"):
            h = net.features(x)
        return net.embed(h)
    def embed_step():
        with torch.inference_mode():
            return forward(x)
    def step():
        opt.zero_grad(set_to_none=True)
        f = forward(x)
        logits = (cosface_logits if a.head == "cosface" else arcface_logits)(f, net.weight, y, a.scale, a.margin)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        return loss
    if a.embed:
        net.eval()
        step = embed_step
    for _ in range(a.warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    print(json.dumps({"impl": "pytorch embed" if a.embed else "pytorch", "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "autocast": a.autocast, "channels_last": a.channels_last,
                      "width": a.width, "blocks": a.blocks, "dim": a.dim, "batch": a.batch, "steps": a.steps,
                      "seconds": dt, "images_per_s": a.steps * a.batch / dt}))


if __name__ == "__main__":
    main()
