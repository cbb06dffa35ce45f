#!/usr/bin/env python3
"""Builds the emoji retrieval set: one class per emoji code point, one image per openly licensed
design of it, in Stanford Online Products' layout (`Ebay_train.txt`, `Ebay_test.txt`), so that
`bcl` trains on some code points and retrieves unseen ones (`[data] format = "sop"`).

The designs come from the npm registry (pinned versions, checked against their published
SHA-512 before use) and their licences allow this use with attribution:

- Google Noto Emoji (Apache-2.0), PNG 64 px from `emoji-datasource-google`;
- Twitter Twemoji (CC-BY-4.0), PNG 64 px from `emoji-datasource-twitter`;
- OpenMoji (CC-BY-SA-4.0), SVG from `openmoji` (its `data/openmoji.csv` gives every code point's
  CLDR name, which names Fluent's files);
- Microsoft Fluent Emoji (MIT), SVG from `fluentui-emoji`, three styles (color, flat,
  high contrast), each counted as one design.

Only base emoji (no skin-tone modifiers) that every design has are kept: 1,562 code points with
the pinned versions, six images each. Each image is drawn on white and resized to `--size`
pixels (RGB PNG, under `images-<size>/<code point>/<design>.png`; the Unicode group is the
super class). Code points go to the training or the test list by a hash of the code point
(`--test-share`, default one half), so the test classes are unseen in training; within a class
the designs are listed in an order drawn from the same hash, so `validation_per_class` holds out
different designs in different classes. The output is deterministic.

Usage: .venv/bin/python scripts/emoji-data.py --out data/emoji [--size 32] [--test-share 0.5]
(needs `pillow` and `cairosvg`, which scripts/setup.sh installs into .venv).
"""

import argparse
import base64
import csv
import hashlib
import io
import os
import re
import sys
import tarfile
import tempfile
import urllib.request

PACKAGES = {
    "google": (
        "emoji-datasource-google",
        "16.0.0",
        "ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A==",
    ),
    "twitter": (
        "emoji-datasource-twitter",
        "16.0.0",
        "7F+uCuHH+7Qnrc15P5tnbvKkg9E6tlzi4MnT2uW1RlN4pLYTza6cP/dstIfSDMtpjFLWuZewWg8jBbuL2eyELQ==",
    ),
    "openmoji": (
        "openmoji",
        "17.0.0",
        "EBnYrNGdcdw+OSXmENeNE1yBNRu6tOraTmoOyUbJkTmvT/+XETp8RZLSJFzD3lrPc5N9CzsyPnRTk0Vp4UaI9w==",
    ),
    "fluent": (
        "fluentui-emoji",
        "1.3.0",
        "JTXXwqIie2rWTgOkIJDJxr0WtwTz2WU4kdOq8buLVThYwQ264aFR2jdTyuon2oEbLqqGMT64zI4btyn1saB2xw==",
    ),
}

# The designs, in the order a class's images start from before the per-class rotation.
DESIGNS = ["google", "twitter", "openmoji", "fluent-color", "fluent-flat", "fluent-high-contrast"]
FLUENT_STYLES = {"fluent-color": "modern", "fluent-flat": "flat", "fluent-high-contrast": "high-contrast"}
SKIN_TONES = {"1f3fb", "1f3fc", "1f3fd", "1f3fe", "1f3ff"}


def key(hexcode):
    """A code point sequence's key: lower-case hex joined by '-', variation selector 16 dropped
    (vendors differ in whether they write it)."""
    return "-".join(p for p in hexcode.lower().split("-") if p and p != "fe0f")


def is_base(k):
    """Whether a key has no skin-tone modifier."""
    return not (set(k.split("-")) & SKIN_TONES)


def slug(name):
    """Fluent's file name for a CLDR name: lower case, apostrophes and quotes dropped, every
    other run of non-alphanumerics a '-'."""
    return re.sub(r"[^a-z0-9]+", "-", re.sub("[’'“”:.]", "", name.lower())).strip("-")


def hash64(text):
    """The first 8 bytes of the text's SHA-256 as an integer in [0, 2^64): deterministic draws."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def is_test(k, share):
    """Whether a code point is a test class: hash64('split:' + key), as a fraction of 2^64,
    below `share`."""
    return hash64("split:" + k) < share * 2**64


def design_order(k):
    """The class's designs in a rotation drawn from its key (hash64('order:' + key))."""
    r = hash64("order:" + k) % len(DESIGNS)
    return DESIGNS[r:] + DESIGNS[:r]


def write_atomic(path, write):
    """Writes `path` through `write(binary file)` into a temporary file beside it, then renames
    it over `path`: a stopped run leaves no half-written file under the final name."""
    with tempfile.NamedTemporaryFile(dir=os.path.dirname(path) or ".", delete=False) as f:
        write(f)
    os.replace(f.name, path)


def fetch(name, version, integrity, cache):
    """The package's tarball from the npm registry (cached), checked against its SHA-512."""
    path = os.path.join(cache, f"{name}-{version}.tgz")
    if not os.path.exists(path):
        url = f"https://registry.npmjs.org/{name}/-/{name}-{version}.tgz"
        print(f"downloading {url}", file=sys.stderr)
        with urllib.request.urlopen(url, timeout=300) as r:
            data = r.read()
        write_atomic(path, lambda f: f.write(data))
    with open(path, "rb") as f:
        got = base64.b64encode(hashlib.sha512(f.read()).digest()).decode()
    if got != integrity:
        raise SystemExit(
            f"{path}: SHA-512 {got} is not the published {integrity}; delete it and run again"
        )
    return tarfile.open(path, "r:gz")


def members(tar, pattern):
    """{captured name: member} for the tarball's files whose path matches `pattern`."""
    rx = re.compile(pattern)
    out = {}
    for m in tar.getmembers():
        hit = rx.fullmatch(m.name)
        if hit and m.isfile():
            out[hit.group(1)] = m
    return out


def sources(cache):
    """{design: {key: (tarfile, member)}} for base emoji of every design, and each key's
    Unicode group (OpenMoji's table: smileys-emotion, animals-nature, ...)."""
    tars = {d: fetch(*PACKAGES[d], cache) for d in PACKAGES}
    found = {}
    for d in ("google", "twitter"):
        pngs = members(tars[d], rf"package/img/{d}/64/([0-9a-f-]+)\.png")
        found[d] = {key(n): (tars[d], m) for n, m in pngs.items()}
    om = tars["openmoji"]
    svgs = members(om, r"package/src/(?!extras-)[^/]+/[^/]+/([0-9A-F-]+)\.svg")
    found["openmoji"] = {key(n): (om, m) for n, m in svgs.items()}
    table = om.extractfile(om.getmember("package/data/openmoji.csv")).read().decode("utf-8")
    by_name, group = {}, {}
    for row in csv.DictReader(io.StringIO(table)):
        if not row["group"].startswith("extras-"):
            by_name.setdefault(slug(row["annotation"]), key(row["hexcode"]))
            group.setdefault(key(row["hexcode"]), row["group"])
    fl = tars["fluent"]
    for d, style in FLUENT_STYLES.items():
        files = members(fl, rf"package/icons/{style}/([a-z0-9-]+)\.svg")
        found[d] = {}
        for n, m in files.items():
            base = n[: -len("-default")] if n.endswith("-default") else n
            if base in by_name:
                found[d].setdefault(by_name[base], (fl, m))
    return {d: {k: v for k, v in f.items() if is_base(k)} for d, f in found.items()}, group


def strip_guides(data):
    """The SVG without its `id="grid"` elements: OpenMoji's source SVGs carry the design
    template's guides (a grey frame, blue circles) in such a layer, sometimes with groups
    inside it, hidden in its exports; drawn here, it would frame every OpenMoji image."""
    import xml.etree.ElementTree as ET

    ET.register_namespace("", "http://www.w3.org/2000/svg")
    ET.register_namespace("xlink", "http://www.w3.org/1999/xlink")
    root = ET.fromstring(data)
    for parent in root.iter():
        for child in list(parent):
            if child.get("id") == "grid":
                parent.remove(child)
    return ET.tostring(root)


def render(tar, member, size):
    """The image on white, RGB, `size` × `size` (SVGs drawn at 4× then reduced, without
    OpenMoji's guide layer)."""
    from PIL import Image

    data = tar.extractfile(member).read()
    try:
        if member.name.endswith(".svg"):
            import cairosvg

            data = cairosvg.svg2png(
                bytestring=strip_guides(data), output_width=4 * size, output_height=4 * size
            )
        im = Image.open(io.BytesIO(data)).convert("RGBA")
    except Exception as e:  # a file of the package that does not draw: say which
        raise SystemExit(f"{tar.name}: {member.name}: cannot draw it: {e}") from e
    white = Image.new("RGBA", im.size, (255, 255, 255, 255))
    white.alpha_composite(im)
    return white.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)


def write_list(path, rows):
    """A SOP list, written atomically."""
    lines = ["image_id class_id super_class_id path"] + [" ".join(map(str, r)) for r in rows]
    write_atomic(path, lambda f: f.write(("\n".join(lines) + "\n").encode()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    ap.add_argument("--test-share", type=float, default=0.5, help="share of code points tested")
    ap.add_argument("--cache", help="where the npm tarballs are kept (default OUT/.npm)")
    a = ap.parse_args()
    if not 0.0 < a.test_share < 1.0:
        raise SystemExit(f"--test-share must lie strictly between 0 and 1, got {a.test_share}")
    if not 8 <= a.size <= 512:
        raise SystemExit(f"--size must lie in 8..512 pixels, got {a.size}")
    cache = a.cache or os.path.join(a.out, ".npm")
    os.makedirs(cache, exist_ok=True)
    found, unicode_group = sources(cache)
    keys = sorted(set.intersection(*(set(found[d]) for d in DESIGNS)))
    print(f"{len(keys)} code points in all {len(DESIGNS)} designs", file=sys.stderr)
    groups = {g: i + 1 for i, g in enumerate(sorted(set(unicode_group.values())))}
    train, test = [], []
    image_id = 0
    for i, k in enumerate(keys):
        part = test if is_test(k, a.test_share) else train
        cls_dir = os.path.join(f"images-{a.size}", k)
        os.makedirs(os.path.join(a.out, cls_dir), exist_ok=True)
        group = groups[unicode_group[k]]
        for d in design_order(k):
            rel = os.path.join(cls_dir, f"{d}.png")
            dest = os.path.join(a.out, rel)
            if not os.path.exists(dest):
                img = render(*found[d][k], a.size)
                write_atomic(dest, lambda f: img.save(f, format="PNG"))
            image_id += 1
            part.append((image_id, i + 1, group, rel))
        if (i + 1) % 200 == 0:
            print(f"{i + 1} / {len(keys)} code points", file=sys.stderr)
    write_list(os.path.join(a.out, "Ebay_train.txt"), train)
    write_list(os.path.join(a.out, "Ebay_test.txt"), test)
    n_train = len({r[1] for r in train})
    print(
        f"{a.out}: {n_train} training classes ({len(train)} images), "
        f"{len(keys) - n_train} test classes ({len(test)} images), {a.size} px"
    )


if __name__ == "__main__":
    main()
