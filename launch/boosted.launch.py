"""
Knowledge boosting: capture, small-model, hint and playback nodes, optionally across a link.

role:=all          every node on this machine; with link:=emulated the hint node sits behind
                   link_node (link_delay_ms each way) in <namespace>/remote
role:=device       capture_node, small_node, playback_node (the robot or headset)
role:=workstation  hint_node only (the GPU box); same ROS_DOMAIN_ID as the device
input:=none        no capture_node: audio comes from elsewhere (a bag, an audio driver)
link:=bridge       device and workstation talk over link_node's encrypted CurveZMQ bridge
                   instead of one DDS graph (keys from `kb-ros keys --out <bridge_keys>`);
                   the workstation runs hint_node in <namespace>/<device>
"""

import re

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import Node, SetParameter
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def declare_arguments():
    """Declare the launch arguments (`ros2 launch ... --show-args` lists them)."""
    return [
        DeclareLaunchArgument("role", default_value="all",
                              choices=["all", "device", "workstation"],
                              description="Which side of the system to start on this machine"),
        DeclareLaunchArgument("input", default_value="file", choices=["file", "mic", "none"],
                              description="capture_node source; none: no capture_node"),
        DeclareLaunchArgument("wav", default_value="",
                              description="WAV file for input:=file (empty: the shipped sample)"),
        DeclareLaunchArgument("namespace", default_value="kb", description="Node namespace"),
        DeclareLaunchArgument("link", default_value="emulated",
                              choices=["emulated", "none", "bridge"],
                              description="emulated, none: role:=all only, an emulated network "
                                          "link in between or none; bridge: the encrypted "
                                          "CurveZMQ bridge between device and workstation"),
        DeclareLaunchArgument("link_delay_ms", default_value="24.0",
                              description="Emulated one-way delay, each way"),
        DeclareLaunchArgument("bridge_address", default_value="127.0.0.1",
                              description="link:=bridge: the workstation's address (device), "
                                          "or the address to listen on (workstation; "
                                          "0.0.0.0 for every interface)"),
        DeclareLaunchArgument("bridge_port", default_value="7717",
                              description="link:=bridge: TCP port of the bridge"),
        DeclareLaunchArgument("bridge_keys", default_value="~/kb_keys",
                              description="link:=bridge: the folder kb-ros keys --out made, or "
                                          "this machine's copy (with its workstation/ or "
                                          "<device>/ subfolder)"),
        DeclareLaunchArgument("device", default_value="robot",
                              description="link:=bridge: the device's name in kb-ros keys; "
                                          "the workstation serves it in <namespace>/<device>"),
        DeclareLaunchArgument("model_dir", default_value="",
                              description="Folder with kb/ and large/ checkpoints "
                                          "(empty: the shipped models)"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="Run on /clock (bag replay with ros2 bag play --clock)"),
        DeclareLaunchArgument("params_file",
                              default_value=PathJoinSubstitution(
                                  [FindPackageShare("kb_ros"), "config", "boosted.yaml"]),
                              description="Node parameters (YAML)"),
    ]


def _when(expression):
    """Build a condition from a Python expression over the role, input and link arguments."""
    items = []
    for i, part in enumerate(re.split(r"\b(role|input|link)\b", expression)):
        items += ["'", LaunchConfiguration(part), "'"] if i % 2 else [part]
    return IfCondition(PythonExpression(items))


def generate_launch_description():
    namespace = LaunchConfiguration("namespace")
    model_dir = LaunchConfiguration("model_dir")

    def text(substitution):
        """Pass a launch argument as a string parameter, even when empty or numeric-looking."""
        return ParameterValue(substitution, value_type=str)

    def model(name):
        """Name a shipped model, or its checkpoint folder under model_dir when that is set."""
        return text(PythonExpression(
            ["'", model_dir, f"/{name}' if '", model_dir, f"' else '{name}'"]))

    def node(executable, condition, node_namespace=namespace, **parameters):
        return Node(package="kb_ros", executable=executable, name=executable,
                    namespace=node_namespace, output="screen", condition=condition,
                    parameters=[LaunchConfiguration("params_file"), parameters])

    delay_ms = ParameterValue(LaunchConfiguration("link_delay_ms"), value_type=float)
    device = "role in ('all', 'device')"
    device_name = LaunchConfiguration("device")
    bridge = {"bridge_address": text(LaunchConfiguration("bridge_address")),
              "bridge_port": ParameterValue(LaunchConfiguration("bridge_port"), value_type=int)}

    def key(*path):
        """Name a file in the kb-ros keys folder (concatenated: Humble's PathJoin has no lists)."""
        return text([LaunchConfiguration("bridge_keys"), "/", *path])

    def workstation_bridge(condition, ws_namespace):
        """Start the workstation's bridge end and the hint node serving the device through it."""
        return [
            node("link_node", condition, node_namespace=ws_namespace, mode="bridge_workstation",
                 secret_key=key("workstation/server.key_secret"),
                 authorized_keys_dir=key("workstation/authorized_keys"), **bridge),
            node("hint_node", condition, node_namespace=[*ws_namespace, "/", device_name],
                 model=model("large")),
        ]

    return LaunchDescription([
        *declare_arguments(),
        SetParameter(name="use_sim_time", value=LaunchConfiguration("use_sim_time")),
        node("capture_node", _when(f"{device} and input != 'none'"),
             source=text(LaunchConfiguration("input")), wav=text(LaunchConfiguration("wav"))),
        node("small_node", _when(device), model=model("kb")),
        node("playback_node", _when(device)),
        node("link_node", _when("role == 'all' and link == 'emulated'"),
             uplink_delay_ms=delay_ms, downlink_delay_ms=delay_ms),
        node("hint_node", _when("role == 'all' and link == 'emulated'"),
             node_namespace=[namespace, "/remote"], model=model("large")),
        node("hint_node", _when("(role == 'workstation' and link != 'bridge') or "
                                "(role == 'all' and link == 'none')"),
             model=model("large")),
        node("link_node", _when(f"{device} and link == 'bridge'"), mode="bridge_device",
             secret_key=key(device_name, "/", device_name, ".key_secret"),
             server_public_key=key(device_name, "/server.key"), **bridge),
        *workstation_bridge(_when("role == 'workstation' and link == 'bridge'"), [namespace]),
        *workstation_bridge(_when("role == 'all' and link == 'bridge'"),
                            [namespace, "/remote"]),
    ])
