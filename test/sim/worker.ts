// Runs one system of a scenario in a worker thread (the systems are independent: same seed, same result).
import { parentPort, workerData } from 'node:worker_threads'
import { runSystem } from './run.js'
import type { RunOptions } from './run.js'
import type { SystemName } from './engine.js'

const { options, system, withPrefetch } = workerData as { options: RunOptions, system: SystemName, withPrefetch?: boolean }
const { result, engine } = runSystem(system, options, withPrefetch === true)
const bound = (F: number): number => {
  let us = 0; let sumU = 0; let dMin = Infinity; let N = 0
  for (const n of engine.nodes) {
    const h = engine.net.hosts[n.idx]
    if (n.isSeed) { us += h.up.capBytesPerMs; continue }
    if (!n.boots) continue
    N++; sumU += h.up.capBytesPerMs; dMin = Math.min(dMin, h.down.capBytesPerMs)
  }
  return N === 0 ? 0 : Math.max(F / us, F / dMin, N * F / (us + sumU))
}
parentPort?.postMessage({ result, boundMs: bound(options.trace.distinctBytes), boundBlocksMs: bound(options.trace.blockCount * options.trace.blockSizeBytes) })
