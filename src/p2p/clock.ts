// Time for the p2p layer, injectable (tests, the simulator): a monotonic clock in ms and an abortable sleep.

import { setTimeout as sleepTimer } from 'node:timers/promises'

export interface Clock {
  nowMs: () => number
  sleep: (ms: number, signal?: AbortSignal) => Promise<void>
}

export const systemClock: Clock = {
  nowMs: () => performance.now(),
  sleep: async (ms, signal) => { await sleepTimer(Math.max(0, ms), undefined, { signal }) }
}
