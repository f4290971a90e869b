"""A simulated tabletop robot with a camera (MuJoCo, offscreen): the demo's stand-in for a real arm.

The scene is generated in code (no downloaded assets): a table, a red block, a green goal pad,
a two-finger gripper moved in Cartesian space by three slide joints (the "arm" is an ideal
Cartesian end-effector) and one fixed RGB camera looking at the table from the front.

Actions are those of the default :class:`~qt_ros.qtransformer.tokenizer.ActionTokenizer`:
``x y z`` end-effector deltas in metres per control step (clipped to +-``max_delta``), ``roll
pitch yaw`` (ignored: the gripper never rotates), ``gripper`` 0 (open) .. 1 (closed) and
``terminate`` (ignored here; ending an episode is the caller's business). Every
:meth:`TabletopSim.step` advances the physics by one control period.

Tasks (the ``task`` of :class:`SimConfig`):

- ``lift``: "pick up the red block"; success while the block is held >= ``lift_height`` above
  the table.
- ``place``: "put the red block on the green pad"; success once the block rests on the pad with
  the gripper open and clear of it.

Each :meth:`TabletopSim.reset` draws the block, goal and gripper positions from a seeded
generator, so an episode is a pure function of its seed and the actions. :meth:`state` gives
the privileged state (positions the camera does not measure) that the scripted demonstrator
(:mod:`qt_ros.sim.demonstrator`) acts on, as a :class:`SimState` or a flat vector
(:data:`STATE_NAMES`) for the ROS topic ``sim_robot/state``.

Rendering uses ``MUJOCO_GL`` (default ``egl``; ``osmesa`` also works; both render on the CPU
here) with reflections and, by default, shadows off: with MuJoCo's default shadow map a render
took ~170 ms at 128x128, without shadows ~2-13 ms (idle vs busy 2-core CPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from qt_ros.common.settings import setting

os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco is imported: offscreen, no display

TASKS = {
    "lift": "pick up the red block",
    "place": "put the red block on the green pad",
}
# Decisions an episode may take before it is ended without terminate (collection, evaluation):
# the scripted demonstrator needs up to ~27 of them for lift and ~53 for place.
EPISODE_STEPS = {"lift": 50, "place": 80}
# For help texts: "50 for lift, 80 for place".
EPISODE_STEPS_TEXT = ", ".join(f"{n} for {task}" for task, n in EPISODE_STEPS.items())


def episode_steps(task: str, max_steps: int = 0) -> int:
    """Decisions an episode of ``task`` may take: ``max_steps``, or 0 for the task's default."""
    return max_steps or EPISODE_STEPS[task]


JOINT_NAMES = ("ee_x", "ee_y", "ee_z", "finger_left", "finger_right")
# Layout of the flat privileged state (SimState.to_vector, topic sim_robot/state).
STATE_NAMES = ("ee_x", "ee_y", "ee_z", "gripper_command", "finger_opening",
               "block_x", "block_y", "block_z", "goal_x", "goal_y",
               "grasped", "success", "time")

TABLE_TOP = 0.0  # z of the table surface
BLOCK_HALF = 0.02  # half edge of the cubic block (m)
FINGER_TRAVEL = 0.03  # slide of each finger from open to closed (m)
FINGER_GAP_OPEN = 0.058  # distance between the open fingers' inner faces (m)
WORKSPACE_LOW = (-0.14, -0.14, 0.008)  # finger-tip position bounds (m)
WORKSPACE_HIGH = (0.14, 0.14, 0.18)


@dataclass
class SimConfig:
    """Scene, task and camera of the simulated robot (the module docstring describes the tasks)."""

    task: str = setting("lift", "what to do", choices=TASKS)
    control_period: float = setting(0.1, "seconds of physics per TabletopSim.step "
                                         "(1 / control rate)")
    image_width: int = setting(128, "camera image width (pixels)")
    image_height: int = setting(128, "camera image height (pixels)")
    max_delta: float = setting(0.05, "largest end-effector move per step (m), the default "
                                     "tokenizer's bound")
    lift_height: float = setting(0.05, "how far above the table the block must be held for "
                                       "lift (m)")
    goal_radius: float = setting(0.03, "the block centre must be this close to the pad centre "
                                       "for place (m)")
    block_range: float = setting(0.1, "block (and goal) x, y drawn uniformly from +-this (m)")
    block_yaw: float = setting(0.0, "block yaw drawn uniformly from +-this (rad); 0 keeps it "
                                    "square to the fingers")
    start_height: tuple[float, float] = setting(
        (0.10, 0.16), "(low, high) of the random start height of the finger tips (m)")
    timestep: float = setting(0.002, "physics time step (s)")
    shadows: bool = setting(False, "render shadows (a height cue in the image; about 3x the "
                                   "render time)")
    extra: dict = field(default_factory=dict)  # reserved: keeps configs forward compatible

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown sim task '{self.task}'; choose one of {sorted(TASKS)}")
        if not self.control_period > 0 or not self.timestep > 0:
            raise ValueError("control_period and timestep must be > 0 seconds")
        if self.control_period < self.timestep:
            raise ValueError(f"control_period {self.control_period} s is shorter than the "
                             f"physics timestep {self.timestep} s")
        if min(self.image_width, self.image_height) < 8:
            raise ValueError(f"camera image must be at least 8x8 pixels, got "
                             f"{self.image_width}x{self.image_height}")
        if not 0 < self.block_range <= 0.13:
            raise ValueError("block_range must be in (0, 0.13] m (the reachable table)")

    @property
    def instruction(self) -> str:
        return TASKS[self.task]


@dataclass(frozen=True)
class SimState:
    """Privileged state: everything the demonstrator needs (world frame, metres).

    ``ee`` is the point between the finger tips; ``finger_opening`` 0 (open) .. 1 (closed),
    measured; ``gripper_command`` the last commanded 0..1.
    """

    ee: np.ndarray  # [3]
    gripper_command: float
    finger_opening: float
    block: np.ndarray  # [3] block centre
    goal: np.ndarray  # [2] pad centre (x, y)
    grasped: bool  # both fingers touch the block
    success: bool
    time: float  # seconds since reset

    def to_vector(self) -> np.ndarray:
        """Flat float64 vector in the order of :data:`STATE_NAMES`."""
        return np.concatenate([self.ee, [self.gripper_command, self.finger_opening],
                               self.block, self.goal,
                               [float(self.grasped), float(self.success), self.time]])

    @classmethod
    def from_vector(cls, vector) -> SimState:
        v = np.asarray(vector, dtype=np.float64)
        if v.shape != (len(STATE_NAMES),):
            raise ValueError(f"a sim state vector has {len(STATE_NAMES)} values "
                             f"({' '.join(STATE_NAMES)}), got shape {v.shape}")
        return cls(ee=v[0:3].copy(), gripper_command=float(v[3]), finger_opening=float(v[4]),
                   block=v[5:8].copy(), goal=v[8:10].copy(), grasped=bool(v[10] > 0.5),
                   success=bool(v[11] > 0.5), time=float(v[12]))


def scene_xml(config: SimConfig) -> str:
    """The MJCF of the scene (a string; no asset files)."""
    w, h = config.image_width, config.image_height
    shadow = 512 if config.shadows else 64
    gap = FINGER_GAP_OPEN / 2 + 0.006  # finger centre y when open (finger half width 0.006)
    return f"""
<mujoco model="qt_ros_tabletop">
  <option timestep="{config.timestep}" integrator="implicitfast" cone="elliptic"
          impratio="10"/>
  <visual>
    <global offwidth="{max(w, 64)}" offheight="{max(h, 64)}"/>
    <quality shadowsize="{shadow}"/>
    <headlight ambient="0.45 0.45 0.45" diffuse="0.5 0.5 0.5" specular="0 0 0"/>
  </visual>
  <default>
    <geom solref="0.004 1" solimp="0.95 0.99 0.001"/>
  </default>
  <worldbody>
    <light pos="0.15 -0.2 0.8" dir="-0.2 0.25 -1" diffuse="0.45 0.45 0.45"
           castshadow="{str(config.shadows).lower()}"/>
    <geom name="floor" type="plane" size="1 1 0.01" pos="0 0 -0.30" rgba="0.25 0.27 0.3 1"
          contype="0" conaffinity="0"/>
    <geom name="table" type="box" size="0.25 0.25 0.02" pos="0 0 {TABLE_TOP - 0.02}"
          rgba="0.62 0.52 0.40 1" friction="0.8 0.005 0.0001"/>
    <body name="goal" pos="0 0 {TABLE_TOP}" mocap="true">
      <geom name="goal_pad" type="cylinder" size="0.035 0.0008" pos="0 0 0.0008"
            rgba="0.15 0.75 0.25 1" contype="0" conaffinity="0"/>
    </body>
    <camera name="front" pos="0 -0.36 0.56" xyaxes="1 0 0 0 0.776 0.631" fovy="46"/>
    <body name="block" pos="0 0 {TABLE_TOP + BLOCK_HALF}">
      <freejoint name="block"/>
      <geom name="block" type="box" size="{BLOCK_HALF} {BLOCK_HALF} {BLOCK_HALF}"
            rgba="0.85 0.12 0.1 1" mass="0.05" friction="1.2 0.01 0.0002" condim="4"/>
    </body>
    <body name="hand" pos="0 0 0" gravcomp="1">
      <joint name="ee_x" type="slide" axis="1 0 0" damping="5" range="-0.2 0.2"/>
      <joint name="ee_y" type="slide" axis="0 1 0" damping="5" range="-0.2 0.2"/>
      <joint name="ee_z" type="slide" axis="0 0 1" damping="5" range="0 0.3"/>
      <site name="ee" pos="0 0 0" size="0.004" rgba="1 1 0 0"/>
      <geom name="palm" type="box" size="0.014 0.05 0.008" pos="0 0 0.068" mass="0.3"
            rgba="0.2 0.22 0.28 1"/>
      <geom name="wrist" type="cylinder" size="0.012 0.03" pos="0 0 0.106" mass="0.05"
            rgba="0.55 0.57 0.6 1" contype="0" conaffinity="0"/>
      <body name="finger_left" pos="0 {gap} 0.03" gravcomp="1">
        <joint name="finger_left" type="slide" axis="0 -1 0" damping="2"
               range="0 {FINGER_TRAVEL}"/>
        <geom name="finger_left" type="box" size="0.012 0.006 0.03" mass="0.03"
              rgba="0.85 0.85 0.9 1" friction="1.5 0.01 0.0002" condim="4"/>
      </body>
      <body name="finger_right" pos="0 {-gap} 0.03" gravcomp="1">
        <joint name="finger_right" type="slide" axis="0 1 0" damping="2"
               range="0 {FINGER_TRAVEL}"/>
        <geom name="finger_right" type="box" size="0.012 0.006 0.03" mass="0.03"
              rgba="0.85 0.85 0.9 1" friction="1.5 0.01 0.0002" condim="4"/>
      </body>
    </body>
  </worldbody>
  <contact>
    <exclude body1="hand" body2="finger_left"/>
    <exclude body1="hand" body2="finger_right"/>
    <exclude body1="finger_left" body2="finger_right"/>
  </contact>
  <actuator>
    <position name="ee_x" joint="ee_x" kp="1500" kv="60" ctrlrange="-0.2 0.2"
              forcerange="-40 40"/>
    <position name="ee_y" joint="ee_y" kp="1500" kv="60" ctrlrange="-0.2 0.2"
              forcerange="-40 40"/>
    <position name="ee_z" joint="ee_z" kp="1500" kv="60" ctrlrange="0 0.3"
              forcerange="-40 40"/>
    <position name="finger_left" joint="finger_left" kp="300" kv="5"
              ctrlrange="0 {FINGER_TRAVEL}" forcerange="-6 6"/>
    <position name="finger_right" joint="finger_right" kp="300" kv="5"
              ctrlrange="0 {FINGER_TRAVEL}" forcerange="-6 6"/>
  </actuator>
</mujoco>
"""


class SimRenderError(RuntimeError):
    """Offscreen rendering is not available; the text says which backend failed and what to do."""


class TabletopSim:
    """The simulated robot: ``reset(seed)``, ``step(action)``, ``render()``, ``state()``.

    Not thread-safe; one instance per process (it owns an OpenGL context once it renders).
    """

    def __init__(self, config: SimConfig | None = None):
        import mujoco

        self._mj = mujoco
        self.config = config or SimConfig()
        self.model = mujoco.MjModel.from_xml_string(scene_xml(self.config))
        self.data = mujoco.MjData(self.model)
        m = self.model
        self._substeps = max(1, round(self.config.control_period / m.opt.timestep))
        self._jnt = {n: m.joint(n).qposadr[0] for n in JOINT_NAMES}
        self._dof = {n: m.joint(n).dofadr[0] for n in JOINT_NAMES}
        self._block_qpos = m.joint("block").qposadr[0]
        self._block_dof = m.joint("block").dofadr[0]
        self._geom = {n: m.geom(n).id for n in ("block", "finger_left", "finger_right", "table")}
        self._goal_mocap = m.body("goal").mocapid[0]
        self._renderer = None
        self._low = np.asarray(WORKSPACE_LOW)
        self._high = np.asarray(WORKSPACE_HIGH)
        self.episode_seed: int | None = None
        self.steps = 0
        self.reset(0)

    # ---------------------------------------------------------------- episode

    def reset(self, seed: int) -> SimState:
        """New episode with block, goal and gripper drawn from ``seed``; returns its state."""
        cfg = self.config
        rng = np.random.default_rng(int(seed))
        r = cfg.block_range
        block_xy = rng.uniform(-r, r, size=2)
        goal_xy = block_xy
        while np.linalg.norm(goal_xy - block_xy) < 0.09:  # pad clear of the block
            goal_xy = rng.uniform(-r, r, size=2)
        yaw = rng.uniform(-cfg.block_yaw, cfg.block_yaw) if cfg.block_yaw > 0 else 0.0
        ee = np.array([*rng.uniform(-r, r, size=2), rng.uniform(*cfg.start_height)])

        mj, m, d = self._mj, self.model, self.data
        mj.mj_resetData(m, d)
        q = self._block_qpos
        d.qpos[q:q + 3] = [block_xy[0], block_xy[1], TABLE_TOP + BLOCK_HALF]
        d.qpos[q + 3:q + 7] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]
        d.mocap_pos[self._goal_mocap] = [goal_xy[0], goal_xy[1], TABLE_TOP]
        for i, name in enumerate(("ee_x", "ee_y", "ee_z")):
            d.qpos[self._jnt[name]] = ee[i]
        self._target = ee.copy()
        self._gripper = 0.0
        self._apply_controls()
        mj.mj_forward(m, d)
        for _ in range(25):  # let the block settle on the table
            mj.mj_step(m, d)
        d.time = 0.0
        self.episode_seed = int(seed)
        self.steps = 0
        return self.state()

    def step(self, action) -> SimState:
        """Apply one action (tokenizer layout; see the module docstring) for one control period.

        Only the first 7 values are read: x y z deltas (m), roll pitch yaw (ignored), gripper.
        """
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.size < 7 or not np.isfinite(a[:7]).all():
            raise ValueError(f"a sim action needs 7 finite values (x y z roll pitch yaw "
                             f"gripper [terminate]), got {a.tolist()}")
        lim = self.config.max_delta
        delta = np.clip(a[:3], -lim, lim)
        # The target stays within one step of where the hand is, so that pushing into the
        # block does not wind up a target far beyond it.
        ee = self.ee_position()
        self._target = np.clip(np.clip(self._target + delta, ee - lim, ee + lim),
                               self._low, self._high)
        self._gripper = float(np.clip(a[6], 0.0, 1.0))
        self._apply_controls()
        for _ in range(self._substeps):
            self._mj.mj_step(self.model, self.data)
        self.steps += 1
        return self.state()

    def _apply_controls(self) -> None:
        d = self.data
        d.ctrl[0:3] = self._target
        d.ctrl[3:5] = self._gripper * FINGER_TRAVEL

    # ---------------------------------------------------------------- observations

    def ee_position(self) -> np.ndarray:
        """Point between the finger tips (world, m)."""
        return np.array([self.data.qpos[self._jnt[n]] for n in ("ee_x", "ee_y", "ee_z")])

    def block_position(self) -> np.ndarray:
        q = self._block_qpos
        return self.data.qpos[q:q + 3].copy()

    def goal_position(self) -> np.ndarray:
        return self.data.mocap_pos[self._goal_mocap][:2].copy()

    def joint_positions(self) -> np.ndarray:
        """Positions of :data:`JOINT_NAMES` (m)."""
        return np.array([self.data.qpos[self._jnt[n]] for n in JOINT_NAMES])

    def joint_velocities(self) -> np.ndarray:
        return np.array([self.data.qvel[self._dof[n]] for n in JOINT_NAMES])

    def finger_opening(self) -> float:
        """Measured finger closure, 0 (open) .. 1 (fully closed, nothing between)."""
        q = self.data.qpos
        return float((q[self._jnt["finger_left"]] + q[self._jnt["finger_right"]])
                     / (2 * FINGER_TRAVEL))

    def _touching(self, geom_a: int, geom_b: int) -> bool:
        d = self.data
        for i in range(d.ncon):
            c = d.contact[i]
            if {c.geom1, c.geom2} == {geom_a, geom_b}:
                return True
        return False

    def grasped(self) -> bool:
        """Both fingers touch the block."""
        g = self._geom
        return self._touching(g["finger_left"], g["block"]) and \
            self._touching(g["finger_right"], g["block"])

    def success(self) -> bool:
        """The task's success detector (see the module docstring)."""
        block = self.block_position()
        lifted = block[2] - BLOCK_HALF - TABLE_TOP
        if self.config.task == "lift":
            return bool(lifted >= self.config.lift_height and self.grasped())
        g = self._geom
        on_pad = np.linalg.norm(block[:2] - self.goal_position()) <= self.config.goal_radius
        resting = lifted < 0.005 and self._touching(g["block"], g["table"])
        released = not (self._touching(g["finger_left"], g["block"])
                        or self._touching(g["finger_right"], g["block"]))
        return bool(on_pad and resting and released and self._gripper < 0.5)

    def state(self) -> SimState:
        return SimState(ee=self.ee_position(), gripper_command=self._gripper,
                        finger_opening=self.finger_opening(), block=self.block_position(),
                        goal=self.goal_position(), grasped=self.grasped(),
                        success=self.success(), time=float(self.data.time))

    def render(self) -> np.ndarray:
        """The camera image: H x W x 3 uint8 RGB (a new array)."""
        if self._renderer is None:
            mj = self._mj
            cfg = self.config
            try:
                self._renderer = mj.Renderer(self.model, cfg.image_height, cfg.image_width)
            except Exception as exc:  # noqa: BLE001 - EGL/OSMesa errors have many types
                backend = os.environ.get("MUJOCO_GL", "")
                raise SimRenderError(
                    f"MuJoCo cannot render offscreen with MUJOCO_GL={backend} "
                    f"({type(exc).__name__}: {exc}); install Mesa's EGL (libegl1) or use "
                    f"MUJOCO_GL=osmesa (apt-get install libosmesa6)") from exc
            flags = self._renderer.scene.flags
            flags[mj.mjtRndFlag.mjRND_SHADOW] = int(cfg.shadows)
            flags[mj.mjtRndFlag.mjRND_REFLECTION] = 0
            flags[mj.mjtRndFlag.mjRND_SKYBOX] = 0
        self._renderer.update_scene(self.data, camera="front")
        return self._renderer.render().copy()

    def close(self) -> None:
        """Release the OpenGL context (call before the interpreter exits)."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self) -> TabletopSim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class EpisodeResult:
    """What :func:`run_episode` saw: one entry per step (actions, states; frames if rendered)."""

    seed: int
    success: bool  # the success detector after the last step
    terminated: bool  # the actor chose terminate (else max_steps ran out)
    actions: list[np.ndarray] = field(default_factory=list)
    states: list[SimState] = field(default_factory=list)  # states[t] is what action t saw
    frames: list[np.ndarray] = field(default_factory=list)

    @property
    def length(self) -> int:
        return len(self.actions)


def run_episode(sim: TabletopSim, act, seed: int, max_steps: int = 80,
                render: bool = False) -> EpisodeResult:
    """Reset ``sim`` to ``seed`` and step it with ``act(state) -> action`` until the action's
    terminate value (index 7) is > 0.5 or ``max_steps`` actions ran.

    The terminating action is recorded but not executed (as the policy node holds instead).
    """
    state = sim.reset(seed)
    result = EpisodeResult(seed=int(seed), success=False, terminated=False)
    for _ in range(max_steps):
        if render:
            result.frames.append(sim.render())
        action = np.asarray(act(state), dtype=np.float64)
        result.actions.append(action)
        result.states.append(state)
        if action.size > 7 and action[7] > 0.5:
            result.terminated = True
            break
        state = sim.step(action)
    result.success = sim.success()
    return result
