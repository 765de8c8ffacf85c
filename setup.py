"""ament_python package setup: the same console scripts under colcon and under plain pip."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "kb_ros"
NODES = ["capture_node", "small_node", "hint_node", "playback_node", "link_node"]

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    package_data={PACKAGE: ["share/models/*/*", "share/samples/*"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/samples", glob(f"{PACKAGE}/share/samples/*")),
    ],
    python_requires=">=3.10",
    install_requires=[
        "numpy>=1.24",
        "scipy>=1.10",
        "PyYAML>=6.0",
        "matplotlib>=3.7",
        "torch==2.13.0",
        "cyclonedds==11.0.1",
        "rosbags>=0.10",
        "tqdm>=4.60",
    ],
    extras_require={
        "audio": ["sounddevice>=0.4.6"],
        "bridge": ["pyzmq>=25"],
        "onnx": ["onnxruntime>=1.20", "onnx>=1.17", "onnxscript>=0.5"],
        "data": ["pyroomacoustics>=0.7"],
        "metrics": ["pesq>=0.0.4", "pystoi>=0.4"],
        "dev": ["pytest>=7", "pytest-timeout>=2.1", "hypothesis>=6", "flake8>=6",
                "pydocstyle>=6", "catkin_pkg>=1.0"],
    },
    zip_safe=False,
    maintainer="kb_ros maintainers",
    maintainer_email="kb-ros@example.org",
    description="Knowledge boosting for low-latency streaming speech enhancement on ROS 2.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [f"{node} = {PACKAGE}.nodes.{node}:main" for node in NODES]
        + [f"kb-ros = {PACKAGE}.cli.main:main"],
    },
)
