"""ddcache: offline table caches (LMDB) and a Cascade R-CNN trainer that streams from them."""
from setuptools import find_packages, setup

setup(
    name="ddcache",
    version="0.1.0",
    description="Dataset preprocessing and LMDB caching for table-structure detectors, "
    "plus a tensorpack Cascade R-CNN trainer that streams from the cache.",
    python_requires=">=3.10",
    packages=find_packages(include=["ddcache", "ddcache.*", "trainer", "trainer.*"]),
    install_requires=[
        "numpy>=1.24",
        "lmdb>=1.4",
        "msgpack>=1.0",
        "opencv-python-headless>=4.8",
        "pypdfium2>=4.20",
        "reportlab>=4.0",
        "click>=8.1",
        "PyYAML>=6.0",
        "tqdm>=4.60",
        "psutil>=5.9",
        "matplotlib>=3.7",
        "pycocotools>=2.0.7",
        "tensorpack==0.11",
        # one TensorFlow for CPU and GPU ("tensorflow[and-cuda]==2.21.0" adds the CUDA libraries);
        # tf-keras (legacy Keras, which tensorpack needs) requires "tensorflow", so nothing else is pulled in
        "tensorflow==2.21.0",
        "tf-keras==2.21.0",
        "tensorboard>=2.20",
    ],
    # dask: `ddcache build --dask` (distributed builds); the tests run it on a LocalCluster.
    extras_require={"dask": ["distributed>=2024.1"], "test": ["pytest>=7", "distributed>=2024.1"]},
    entry_points={
        "console_scripts": [
            "ddcache=ddcache.cli:run",
            "ddtrain=trainer.cli:run",
        ]
    },
)
