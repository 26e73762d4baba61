// One timer for an agent's periodic housekeeping: the p2p heartbeat, gossipsub's heartbeat and score decay, the
// prefetch manager's heartbeat, all once a second.
//
// Why one: on the machines we measure on, a process that sleeps pays for each wake-up far more than for what it
// then does (`perf stat` of node running an empty 1 s setInterval: 3.5 ms of CPU per wake-up, 0.4 % of a core).
// Four 1 s timers at four phases cost about four times one. Tasks run in the order they were added, each on its
// own: one that throws does not stop the others or the beat.

/** The agent's beat: gossipsub's heartbeat interval (1 s), which the p2p and prefetch heartbeats share by default. */
export const BEAT_MS = 1000

export interface Beat {
  readonly periodMs: number
  /** Runs task on every beat until the returned function is called. */
  add: (task: () => void) => () => void
}

export interface BeatTimer extends Beat {
  /** Starts the timer (unref'd: the beat alone does not keep a process alive). Idempotent. */
  start: () => void
  stop: () => void
  /** One beat now (tests; the timer calls it). */
  fire: () => void
}

export interface BeatInit {
  periodMs?: number
  /** A task threw (it keeps its place). */
  onError?: (err: unknown) => void
  setInterval?: (fn: () => void, ms: number) => unknown
  clearInterval?: (handle: unknown) => void
}

export function createBeat (init: BeatInit = {}): BeatTimer {
  const periodMs = init.periodMs ?? BEAT_MS
  if (!(periodMs > 0)) throw new RangeError(`beat period must be > 0 ms, got ${periodMs}`)
  const setIntervalFn = init.setInterval ?? ((fn, ms) => { const t = setInterval(fn, ms); t.unref(); return t })
  const clearIntervalFn = init.clearInterval ?? (handle => { clearInterval(handle as NodeJS.Timeout) })
  // A Set keeps insertion order, and a task removed during a beat is not run later in that beat.
  const tasks = new Set<{ run: () => void }>()
  let handle: unknown

  const fire = (): void => {
    for (const task of tasks) {
      try { task.run() } catch (err) { init.onError?.(err) }
    }
  }
  return {
    periodMs,
    add: (run) => {
      const task = { run }
      tasks.add(task)
      return () => { tasks.delete(task) }
    },
    start: () => { handle ??= setIntervalFn(fire, periodMs) },
    stop: () => {
      if (handle !== undefined) clearIntervalFn(handle)
      handle = undefined
    },
    fire
  }
}
