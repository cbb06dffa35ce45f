"""scripts/emoji-data.py: its rules by hand, and a whole run on generated npm tarballs (no
network): which code points are kept, the lists' layout, the images, determinism, and a
tarball whose checksum is not the published one refused."""

import base64
import hashlib
import importlib.util
import io
import os
import sys
import tarfile

import pytest
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location(
    "emoji_data", os.path.join(HERE, "..", "emoji-data.py")
)
emoji_data = importlib.util.module_from_spec(spec)
spec.loader.exec_module(emoji_data)


def test_keys_names_and_tones_by_hand():
    assert emoji_data.key("2764-FE0F") == "2764"
    assert emoji_data.key("1F468-200D-1F4BB") == "1f468-200d-1f4bb"
    assert emoji_data.is_base("1f44d")
    assert not emoji_data.is_base("1f44d-1f3fd")
    assert emoji_data.slug("one o’clock") == "one-oclock"
    assert emoji_data.slug("flag: United States") == "flag-united-states"
    assert emoji_data.slug("A button (blood type)") == "a-button-blood-type"


def test_split_and_order_are_deterministic_and_fair():
    keys = [f"{0x1F300 + i:x}" for i in range(2000)]
    tested = [k for k in keys if emoji_data.is_test(k, 0.5)]
    assert tested == [k for k in keys if emoji_data.is_test(k, 0.5)]
    assert 900 < len(tested) < 1100, len(tested)
    # a larger share only adds classes to the test set
    assert set(tested) <= {k for k in keys if emoji_data.is_test(k, 0.7)}
    firsts = set()
    for k in keys[:200]:
        order = emoji_data.design_order(k)
        assert sorted(order) == sorted(emoji_data.DESIGNS)
        i = emoji_data.DESIGNS.index(order[0])
        assert order == emoji_data.DESIGNS[i:] + emoji_data.DESIGNS[:i], "a rotation"
        firsts.add(order[0])
    assert firsts == set(emoji_data.DESIGNS), "every design leads some class"


def png(color):
    buf = io.BytesIO()
    Image.new("RGBA", (64, 64), color).save(buf, format="PNG")
    return buf.getvalue()


def svg(color):
    # a centred square, with OpenMoji's guide layer (a black frame, in a group inside it as
    # some of its files have) that must not be drawn
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 72 72">'
        '<g id="grid"><g id="inner"><path fill="#000000" d="M68,4V68H4V4H68m4-4H0V72H72V0Z"/>'
        '</g></g>'
        f'<g id="color"><rect x="18" y="18" width="36" height="36" fill="{color}"/></g></svg>'
    ).encode()


def tarball(path, files):
    with tarfile.open(path, "w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo("package/" + name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    with open(path, "rb") as f:
        return base64.b64encode(hashlib.sha512(f.read()).digest()).decode()


# Code points: grinning face (every design), red heart (written with FE0F by some vendors),
# thumbs up with a skin tone (a modifier: dropped), a flag Fluent lacks (dropped).
CSV = (
    "emoji,hexcode,group,subgroups,annotation\n"
    "x,1F600,smileys-emotion,face-smiling,grinning face\n"
    "x,2764-FE0F,smileys-emotion,heart,red heart\n"
    "x,1F44D-1F3FD,people-body,hand,thumbs up: medium skin tone\n"
    "x,1F1EB-1F1F7,flags,country-flag,flag: France\n"
)


@pytest.fixture
def packages(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    vendor_png = {
        k: png(c)
        for k, c in [("1f600", "yellow"), ("2764-fe0f", "red"), ("1f44d-1f3fd", "brown"),
                     ("1f1eb-1f1f7", "blue")]
    }
    om = {"data/openmoji.csv": CSV.encode()}
    for hexcode, group in [("1F600", "smileys-emotion/face-smiling"),
                           ("2764", "smileys-emotion/heart"),
                           ("1F44D-1F3FD", "people-body/hand"),
                           ("1F1EB-1F1F7", "flags/country-flag")]:
        om[f"src/{group}/{hexcode}.svg"] = svg("orange")
    om["src/extras-openmoji/x/E000.svg"] = svg("black")
    fluent = {}
    for style in ["modern", "flat", "high-contrast"]:
        fluent[f"icons/{style}/grinning-face.svg"] = svg("gold")
        fluent[f"icons/{style}/red-heart-default.svg"] = svg("crimson")
        fluent[f"icons/{style}/thumbs-up-medium.svg"] = svg("tan")
    pins = {}
    for design, files in [
        ("google", {f"img/google/64/{k}.png": v for k, v in vendor_png.items()}),
        ("twitter", {f"img/twitter/64/{k}.png": v for k, v in vendor_png.items()}),
        ("openmoji", om),
        ("fluent", fluent),
    ]:
        name, version, _ = emoji_data.PACKAGES[design]
        digest = tarball(cache / f"{name}-{version}.tgz", files)
        pins[design] = (name, version, digest)
    monkeypatch.setattr(emoji_data, "PACKAGES", pins)
    return cache


def run(out, cache, *extra):
    argv = ["emoji-data.py", "--out", str(out), "--cache", str(cache), "--size", "16", *extra]
    old = sys.argv
    sys.argv = argv
    try:
        emoji_data.main()
    finally:
        sys.argv = old


def read_list(path):
    lines = path.read_text().splitlines()
    assert lines[0] == "image_id class_id super_class_id path"
    return [line.split() for line in lines[1:]]


def test_a_whole_run_on_generated_packages(tmp_path, packages):
    out = tmp_path / "emoji"
    run(out, packages)
    test = read_list(out / "Ebay_test.txt")
    train = read_list(out / "Ebay_train.txt")
    rows = test + train
    classes = {}
    for image_id, cls, sup, path in rows:
        classes.setdefault(cls, []).append(path)
    # the skin-tone modifier and the flag Fluent lacks are dropped; the heart's FE0F is not
    # a difference between vendors
    assert sorted({p.split("/")[1] for p in sum(classes.values(), [])}) == ["1f600", "2764"]
    for paths in classes.values():
        designs = sorted(os.path.basename(p)[:-4] for p in paths)
        assert designs == sorted(emoji_data.DESIGNS)
    assert sorted(int(r[0]) for r in rows) == list(range(1, len(rows) + 1))
    assert {r[2] for r in rows} == {"3"}, "smileys-emotion, third of the three groups sorted"
    # the lists part by the code point's hash
    for cls, paths in classes.items():
        k = paths[0].split("/")[1]
        listed = test if emoji_data.is_test(k, 0.5) else train
        assert all(r[3] in paths for r in listed if r[1] == cls) and any(r[1] == cls for r in listed)
    for _, _, _, path in rows:
        im = Image.open(out / path)
        assert im.size == (16, 16) and im.mode == "RGB"
    heart = Image.open(out / "images-16" / "2764" / "google.png").getpixel((8, 8))
    assert heart[0] > 200 and heart[1] < 60, heart
    drawn = Image.open(out / "images-16" / "2764" / "openmoji.png")
    assert drawn.getpixel((8, 8))[1] > 100, "orange in the middle"
    assert drawn.getpixel((0, 0)) == (255, 255, 255), "no guide frame, white around"
    # a second run writes the same lists
    before = [(out / f).read_bytes() for f in ["Ebay_train.txt", "Ebay_test.txt"]]
    run(out, packages)
    assert before == [(out / f).read_bytes() for f in ["Ebay_train.txt", "Ebay_test.txt"]]


def test_a_tarball_that_is_not_the_published_one_is_refused(tmp_path, packages):
    name, version, _ = emoji_data.PACKAGES["google"]
    with open(packages / f"{name}-{version}.tgz", "ab") as f:
        f.write(b"tampered")
    with pytest.raises(SystemExit, match="is not the published"):
        run(tmp_path / "emoji", packages)


def test_a_file_that_does_not_draw_is_named(tmp_path, packages, monkeypatch):
    name, version, _ = emoji_data.PACKAGES["openmoji"]
    with tarfile.open(packages / f"{name}-{version}.tgz") as t:
        files = {m.name[len("package/"):]: t.extractfile(m).read() for m in t.getmembers()}
    files["src/smileys-emotion/face-smiling/1F600.svg"] = b"<svg><g></svg>"
    digest = tarball(packages / f"{name}-{version}.tgz", files)
    pins = dict(emoji_data.PACKAGES)
    pins["openmoji"] = (name, version, digest)
    monkeypatch.setattr(emoji_data, "PACKAGES", pins)
    with pytest.raises(SystemExit, match="1F600.svg: cannot draw it"):
        run(tmp_path / "emoji", packages)


def test_bad_arguments_are_refused(tmp_path, packages):
    with pytest.raises(SystemExit, match="--test-share must lie strictly between 0 and 1"):
        run(tmp_path / "e", packages, "--test-share", "1")
    with pytest.raises(SystemExit, match="--size must lie in 8..512"):
        run(tmp_path / "e", packages, "--size", "4")
