"""``imagenet_dogs``: ImageNet Dogs as FocusNet defines it: the 118 dog classes of ILSVRC-2012
(147,873 training and 5,900 validation images), down-sampled to 64×64 and held in memory.

The classes are the ImageNet wnids n02085620 (Chihuahua) … n02113978 (Mexican hairless):
indices 151–268 of the standard (sorted-wnid) class order, checked against the synset list that
timm ships (``timm/data/_info/imagenet_synsets.txt``). (n02116738, African hunting dog, is
index 275: the wolves, foxes and wild dogs 269–280 are not dog breeds and are not included.)
Label i is the i-th of these wnids in sorted order; names are ImageNet's readable names.

Layout: the ImageNet layout read by the ``imagenet`` reader (ROOT/train/<wnid>/ and
ROOT/val/<wnid>/, or a flat val/ with the devkit ground truth or Kaggle's LOC_val_solution.csv;
see :mod:`.imagenet`); only the dog classes are kept, so a copy holding only those 118 train
folders and their val/<wnid>/ folders works as well (a flat val/ labelled by the devkit or the
Kaggle CSV needs all 1000 train folders, since those files name every class). The validation images are the test split;
the engine carves its validation split from train.

Down-sampling: every image is decoded once and resized as a whole (aspect ratio not kept, PIL
bilinear with its antialiasing) to ``image_size`` × ``image_size`` (default 64, FocusNet's size),
as in the down-sampled ImageNet variants; the uint8 tensors (147,873 × 3 × 64 × 64 = 1.8 GB) are
cached in the same decoded-tensor cache as Tiny ImageNet's (``cache``, ``$SOFTLABELS_CACHE``,
see :mod:`.tinyimagenet`). Training augmentation: random crop with 4-pixel padding and a flip.

With ``expect_official`` (default) the 118 classes, 147,873 training and 5,900 validation
images are required.
"""
from __future__ import annotations

from typing import Optional

from ..errors import ConfigError, DataError
from ..registry import DATASETS
from .base import ImageTensors
from .fgvc import check_official, need_root
from .files import IMAGENET_MEAN, IMAGENET_STD
from .imagenet import LAYOUT, _scan, images_root, imagenet
from .tinyimagenet import decoded_dataset

DOG_WNIDS = tuple("""
n02085620 n02085782 n02085936 n02086079 n02086240 n02086646 n02086910 n02087046 n02087394
n02088094 n02088238 n02088364 n02088466 n02088632 n02089078 n02089867 n02089973 n02090379
n02090622 n02090721 n02091032 n02091134 n02091244 n02091467 n02091635 n02091831 n02092002
n02092339 n02093256 n02093428 n02093647 n02093754 n02093859 n02093991 n02094114 n02094258
n02094433 n02095314 n02095570 n02095889 n02096051 n02096177 n02096294 n02096437 n02096585
n02097047 n02097130 n02097209 n02097298 n02097474 n02097658 n02098105 n02098286 n02098413
n02099267 n02099429 n02099601 n02099712 n02099849 n02100236 n02100583 n02100735 n02100877
n02101006 n02101388 n02101556 n02102040 n02102177 n02102318 n02102480 n02102973 n02104029
n02104365 n02105056 n02105162 n02105251 n02105412 n02105505 n02105641 n02105855 n02106030
n02106166 n02106382 n02106550 n02106662 n02107142 n02107312 n02107574 n02107683 n02107908
n02108000 n02108089 n02108422 n02108551 n02108915 n02109047 n02109525 n02109961 n02110063
n02110185 n02110341 n02110627 n02110806 n02110958 n02111129 n02111277 n02111500 n02111889
n02112018 n02112137 n02112350 n02112706 n02113023 n02113186 n02113624 n02113712 n02113799
n02113978
""".split())
assert len(DOG_WNIDS) == 118 and list(DOG_WNIDS) == sorted(DOG_WNIDS)


@DATASETS.register(
    "imagenet_dogs",
    "ImageNet Dogs (FocusNet): the 118 dog classes of ILSVRC-2012, 147,873 train / 5,900 val (the "
    "test split), from the ImageNet layout, down-sampled to 64x64 once and held in memory",
)
def imagenet_dogs(
    root: Optional[str] = None,
    image_size: int = 64,
    expect_official: bool = True,
    cache: bool = True,
) -> ImageTensors:
    """The 118 dog classes of an ImageNet tree, resized once to image_size × image_size."""
    what = "imagenet_dogs"
    if isinstance(image_size, bool) or not 1 <= image_size <= 512:
        raise ConfigError(f"data.options.image_size: must be 1..512, got {image_size}")
    base = need_root(root, what, LAYOUT)
    if not (images_root(base) / "train").is_dir():
        raise DataError(f"{what}: {images_root(base)} has no train folder; expected {LAYOUT}")
    wnids, _ = _scan(images_root(base) / "train", what)
    dogs = [w for w in wnids if w in set(DOG_WNIDS)]
    if not dogs:
        raise DataError(f"{what}: {images_root(base) / 'train'} has none of the 118 dog class folders "
                        f"({DOG_WNIDS[0]} ... {DOG_WNIDS[-1]})")
    full = imagenet(str(base), expect_official=False)
    new_label = {wnids.index(w): i for i, w in enumerate(dogs)}
    classes = [full.classes[wnids.index(w)] for w in dogs]

    def keep(split):
        pairs = [(p, new_label[int(y)]) for p, y in zip(split.paths, split.labels.tolist())
                 if int(y) in new_label]
        return [p for p, _ in pairs], [y for _, y in pairs]

    train_paths, train_labels = keep(full.train)
    test_paths, test_labels = keep(full.test)
    check_official(
        what, expect_official,
        {"classes": len(dogs), "train": len(train_paths), "val (test)": len(test_paths)},
        {"classes": 118, "train": 147873, "val (test)": 5900}, images_root(base),
    )
    if not test_paths:
        raise DataError(f"{what}: {images_root(base) / 'val'} has no images of the dog classes")
    return decoded_dataset(what, (train_paths, train_labels), (test_paths, test_labels), classes,
                           image_size, cache, IMAGENET_MEAN, IMAGENET_STD)
