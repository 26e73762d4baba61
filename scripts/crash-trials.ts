// Crash trials with counts: kill -9 an agent at a random moment while it fetches on demand, prefetches at idle,
// evicts, records a boot profile, or creates and destroys instances; then check what the crash left and
// restart it. After each kill: every block recorded present verifies (read straight from disk), every image
// record has its manifest, every instance record its overlay. After each restart: every overlay passes
// `qemu-img check`, no acknowledged instance is lost or resurrected, both images are still there, and (every
// 10th trial) the whole of one image reads back exactly over NBD.
//
// npm run crash-trials -- [--trials 200] [--seed S] [--image-mib 4] [--json]
// Prints trials, failures, what was lost and restart time (p50/max). Exit 1 when any trial failed.

import '../src/polyfill.js'
import { parseArgs } from 'node:util'
import { join } from 'node:path'
import { createHash } from 'node:crypto'
import { setTimeout as delay } from 'node:timers/promises'
import { execa } from 'execa'
import { startDaemon, makeTempDir, removeDir, type TestDaemon } from './lib/agent-process.js'
import { nbdConnect } from './lib/nbd-replay.js'
import { verifyDataDir, dataDirProblems } from './lib/verify-data-dir.js'
import { mulberry32, percentile, processFigures, writeAgentConfigFile } from './lib/trial-utils.js'
import { makeImage, sha256File } from '../test/helpers/images.js'

const MiB = 1024 * 1024
const SCENARIOS = ['demand', 'prefetch', 'evict', 'profile', 'instances'] as const
type Scenario = typeof SCENARIOS[number]
/** A kill lands this long after the action starts, at most: the actions last about that long. */
const MAX_KILL_DELAY_MS = 1500
/** Instances kept at most (older ones are destroyed), so the overlay checks stay quick. */
const MAX_INSTANCES = 6
/** Bound on any single action's reads or RPC loop. */
const MAX_ACTION_STEPS = 2000
const DATA_CHECK_EVERY = 10

export interface TrialsReport {
  seed: number
  trials: number
  failures: number
  byScenario: Record<string, { trials: number, failures: number }>
  lost: { badPresentBlocks: number, badImageRecords: number, instancesWithoutOverlay: number, lostInstances: number, resurrectedInstances: number, lostImages: number, overlayCheckFailures: number, wrongReads: number, restartFailures: number }
  /** Files left behind (not loss): overlay files without a record, image dirs without one (at the last check). */
  garbage: { orphanOverlays: number, interruptedRegistrations: number, overlayLeaks: number }
  presentBlocksChecked: number
  dataChecks: number
  restartMs: { p50: number, max: number }
  /** CPU-seconds the agent spent to its "started" line: unlike wall time, not inflated by a loaded machine. */
  restartCpuSeconds: { p50: number, max: number }
  failureLog: string[]
}

export async function runCrashTrials (options: { trials: number, seed: number, imageMiB: number, log?: (line: string) => void }): Promise<TrialsReport> {
  const log = options.log ?? (() => {})
  const random = mulberry32(options.seed)
  const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)]
  const imageBytes = options.imageMiB * MiB
  const dir = await makeTempDir('vmt-crash')
  const report: TrialsReport = {
    seed: options.seed,
    trials: 0,
    failures: 0,
    byScenario: Object.fromEntries(SCENARIOS.map(s => [s, { trials: 0, failures: 0 }])),
    lost: { badPresentBlocks: 0, badImageRecords: 0, instancesWithoutOverlay: 0, lostInstances: 0, resurrectedInstances: 0, lostImages: 0, overlayCheckFailures: 0, wrongReads: 0, restartFailures: 0 },
    garbage: { orphanOverlays: 0, interruptedRegistrations: 0, overlayLeaks: 0 },
    presentBlocksChecked: 0,
    dataChecks: 0,
    restartMs: { p50: 0, max: 0 },
    restartCpuSeconds: { p50: 0, max: 0 },
    failureLog: []
  }
  const restartMs: number[] = []
  const restartCpu: number[] = []
  let origin: TestDaemon | undefined
  let victim: TestDaemon | undefined
  try {
    // Two images, one with a hole, so zero blocks, eviction between images and prefetch all happen.
    const images = ['a', 'b']
    const shas = new Map<string, string>()
    for (const id of images) {
      const path = join(dir, `${id}.raw`)
      await makeImage(path, imageBytes, id === 'a' ? [[0, imageBytes]] : [[0, imageBytes / 2], [imageBytes * 3 / 4, imageBytes / 4]])
      shas.set(id, await sha256File(path))
    }
    const originConfig = await writeAgentConfigFile(join(dir, 'origin.json'), dir, { prefetch: { enabled: false }, p2p: { heartbeatMs: 500 } })
    origin = await startDaemon({ dir: join(dir, 'origin'), args: ['--listen', '/ip4/127.0.0.1/tcp/0', '--config', originConfig], timeoutMs: 180_000 })
    for (const id of images) await origin.call('image.register', { id, path: join(dir, `${id}.raw`) })
    const status = await origin.call('node.status')
    // The victim: a quota of 1.5 images (so reading one evicts the other), a slow idle prefetch (so a kill
    // lands in the middle of it) and a short recording quiet time (so profiles are saved within a trial).
    const victimConfig = await writeAgentConfigFile(join(dir, 'victim.json'), dir, {
      prefetch: { enabled: true, recordingQuietMs: 300, rateLimitBytesPerSec: Math.max(MiB, imageBytes) },
      cache: { quotaBytes: Math.floor(imageBytes * 1.5), fetchTimeoutMs: 10_000 },
      p2p: { heartbeatMs: 500 }
    })
    const victimArgs = ['--listen', '/ip4/127.0.0.1/tcp/0', '--bootstrap', status.listenAddrs[0], '--trust', status.peerId, '--config', victimConfig]
    const victimDir = join(dir, 'victim')
    victim = await startDaemon({ dir: victimDir, args: victimArgs, timeoutMs: 180_000 })
    /** Acknowledged instance state: what a caller was told. In flight at a kill: unknown (either is fine). */
    const instances = new Map<string, { image: string, state: 'created' | 'destroyed' | 'unknown' }>()
    let nextName = 0
    const create = async (d: TestDaemon, image: string): Promise<void> => {
      const name = `vm${nextName++}`
      instances.set(name, { image, state: 'unknown' })
      await d.call('instance.create', { name, image })
      instances.set(name, { image, state: 'created' })
    }
    const destroy = async (d: TestDaemon, name: string): Promise<void> => {
      const entry = instances.get(name)!
      instances.set(name, { ...entry, state: 'unknown' })
      await d.call('instance.destroy', { name })
      instances.set(name, { ...entry, state: 'destroyed' })
    }
    const live = (image?: string): string[] => [...instances].filter(([, e]) => e.state === 'created' && (image === undefined || e.image === image)).map(([n]) => n)
    for (const id of images) await create(victim, id) // the victim learns both images

    const readRandom = async (d: TestDaemon, image: string, signal: AbortSignal, reads: number): Promise<void> => {
      const conn = await nbdConnect({ socketPath: d.nbdSocket, exportName: image }, { timeoutMs: 20_000, signal })
      try {
        for (let i = 0; i < Math.min(reads, MAX_ACTION_STEPS) && !signal.aborted; i++) {
          const length = 4096 * (1 + Math.floor(random() * 64))
          await conn.read(Math.floor(random() * (conn.sizeBytes - length) / 512) * 512, length)
        }
      } finally { await conn.close().catch(() => {}) }
    }
    const readAll = async (d: TestDaemon, image: string, signal: AbortSignal): Promise<string> => {
      const conn = await nbdConnect({ socketPath: d.nbdSocket, exportName: image }, { timeoutMs: 20_000, signal })
      const hash = createHash('sha256')
      try {
        for (let at = 0; at < conn.sizeBytes && !signal.aborted; at += MiB) hash.update(await conn.read(at, Math.min(MiB, conn.sizeBytes - at)))
      } finally { await conn.close().catch(() => {}) }
      return hash.digest('hex')
    }

    // Blocks on disk before the first kill, whatever the kill moments: on a slow machine every kill could come
    // before a fetch completes, and the trials would check no stored data (a fresh-clone suite run at load 8-14
    // found presentBlocksChecked 0). A clean stop writes them out.
    await readAll(victim, images[0], AbortSignal.timeout(120_000))
    await victim.stop()
    victim = await startDaemon({ dir: victimDir, args: victimArgs, timeoutMs: 180_000 })

    const act = async (d: TestDaemon, scenario: Scenario, signal: AbortSignal): Promise<void> => {
      const image = pick(images)
      const other = images.find(i => i !== image)!
      switch (scenario) {
        case 'demand':
          // On-demand fetch: an instance of the image and random reads through its export.
          if (live(image).length === 0) await create(d, image)
          await readRandom(d, image, signal, MAX_ACTION_STEPS)
          break
        case 'evict':
        case 'prefetch':
          // Unpin `image` and read all of the other: over the quota, `image` is evicted. For 'prefetch', pin it
          // again at once: its prefetcher refills it at idle (rate-limited) while the kill comes.
          for (const name of live(image)) await destroy(d, name)
          if (live(other).length === 0) await create(d, other)
          await readAll(d, other, signal)
          if (scenario === 'prefetch') await create(d, image)
          break
        case 'profile':
          // A short boot-like read burst, then quiet: the recording ends and is saved while the kill comes.
          if (live(image).length === 0) await create(d, image)
          await readRandom(d, image, signal, 20 + Math.floor(random() * 100))
          break
        case 'instances':
          for (let i = 0; i < MAX_ACTION_STEPS / 100 && !signal.aborted; i++) {
            if (random() < 0.5 || live().length === 0) await create(d, pick(images))
            else await destroy(d, pick(live()))
          }
          break
      }
    }

    for (let trial = 0; trial < options.trials; trial++) {
      const scenario = SCENARIOS[trial % SCENARIOS.length]
      const problems: string[] = []
      // Keep the instance count small (outside the trial: not under a kill).
      while (live().length > MAX_INSTANCES) await destroy(victim, live()[0])
      const controller = new AbortController()
      const action = act(victim, scenario, controller.signal).catch(err => err as Error)
      const killAfterMs = 50 + Math.floor(random() * MAX_KILL_DELAY_MS)
      await Promise.race([delay(killAfterMs), action])
      await victim.kill()
      controller.abort()
      await action
      // What the crash left, straight from disk.
      const disk = await verifyDataDir(victim.dataDir)
      problems.push(...dataDirProblems(disk))
      report.presentBlocksChecked += disk.presentBlocks
      report.lost.badPresentBlocks += disk.badPresentBlocks.length
      report.lost.badImageRecords += disk.badImageRecords.length
      report.lost.instancesWithoutOverlay += disk.instancesWithoutOverlay.length
      // Left on disk now (they persist from trial to trial, so this is the latest count, not a sum).
      report.garbage.orphanOverlays = disk.orphanOverlays.length
      report.garbage.interruptedRegistrations = disk.imageDirsWithoutRecord.length
      // Restart, timed to its "started" line.
      const startedAt = performance.now()
      try {
        victim = await startDaemon({ dir: victimDir, args: victimArgs, timeoutMs: 180_000 })
      } catch (err) {
        report.lost.restartFailures++
        problems.push(`restart failed: ${(err as Error).message.slice(0, 300)}`)
        report.failureLog.push(`trial ${trial} (${scenario}, kill at ${killAfterMs} ms): ${problems.join('; ')}`)
        report.failures++
        report.byScenario[scenario].failures++
        report.trials++
        break
      }
      restartMs.push(performance.now() - startedAt)
      restartCpu.push((await processFigures(victim.process.pid!)).cpuSeconds)
      // Instances: nothing acknowledged is lost or comes back; every overlay opens.
      const listed = new Set<string>((await victim.call('instance.list')).map((i: { name: string }) => i.name))
      for (const [name, entry] of instances) {
        if (entry.state === 'created' && !listed.has(name)) { report.lost.lostInstances++; problems.push(`instance ${name} was acknowledged and is gone`) }
        if (entry.state === 'destroyed' && listed.has(name)) { report.lost.resurrectedInstances++; problems.push(`instance ${name} was destroyed and is back`) }
        if (entry.state === 'unknown') entry.state = listed.has(name) ? 'created' : 'destroyed'
      }
      for (const path of disk.overlayPaths) {
        const check = await execa('qemu-img', ['check', '-q', '-f', 'qcow2', path], { reject: false, timeout: 30_000 })
        if (check.exitCode === 3) report.garbage.overlayLeaks++
        else if (check.exitCode !== 0) { report.lost.overlayCheckFailures++; problems.push(`qemu-img check ${path}: exit ${check.exitCode} ${check.stderr.slice(0, 200)}`) }
      }
      const imageList = (await victim.call('image.list')) as Array<{ id: string, heldFraction: number }>
      for (const id of images) {
        const found = imageList.find(i => i.id === id)
        if (found === undefined) { report.lost.lostImages++; problems.push(`image ${id} is gone`) } else if (!(found.heldFraction >= 0 && found.heldFraction <= 1)) problems.push(`image ${id} heldFraction ${found.heldFraction}`)
      }
      if (trial % DATA_CHECK_EVERY === DATA_CHECK_EVERY - 1) {
        const id = pick(images)
        report.dataChecks++
        const digest = await readAll(victim, id, AbortSignal.timeout(60_000)).catch((err: Error) => `error: ${err.message}`)
        if (digest !== shas.get(id)) { report.lost.wrongReads++; problems.push(`image ${id} read back as ${digest}`) }
      }
      report.trials++
      report.byScenario[scenario].trials++
      if (problems.length > 0) {
        report.failures++
        report.byScenario[scenario].failures++
        report.failureLog.push(`trial ${trial} (${scenario}, kill at ${killAfterMs} ms): ${problems.join('; ')}`)
      }
      log(`trial ${trial + 1}/${options.trials} ${scenario} kill@${killAfterMs}ms present=${disk.presentBlocks} instances=${disk.instances} restart=${Math.round(restartMs[restartMs.length - 1])}ms ${problems.length === 0 ? 'ok' : 'FAIL ' + problems.join('; ')}`)
    }
  } finally {
    await victim?.stop().catch(() => {})
    await origin?.stop().catch(() => {})
    await removeDir(dir)
  }
  report.restartMs = { p50: Math.round(percentile(restartMs, 0.5)), max: Math.round(Math.max(0, ...restartMs)) }
  report.restartCpuSeconds = { p50: percentile(restartCpu, 0.5), max: Math.max(0, ...restartCpu) }
  return report
}

function printReport (r: TrialsReport): void {
  const lines = [
    `crash trials: seed ${r.seed}, ${r.trials} trials, ${r.failures} failures`,
    ...Object.entries(r.byScenario).map(([s, c]) => `  ${s.padEnd(10)} ${String(c.trials).padStart(4)} trials  ${c.failures} failures`),
    `lost: ${Object.entries(r.lost).map(([k, v]) => `${k} ${v}`).join(', ')}`,
    `garbage (not loss): ${Object.entries(r.garbage).map(([k, v]) => `${k} ${v}`).join(', ')}`,
    `present blocks verified after kills: ${r.presentBlocksChecked}; whole-image reads checked: ${r.dataChecks}`,
    `restart time: p50 ${r.restartMs.p50} ms, max ${r.restartMs.max} ms (wall); CPU to started: p50 ${r.restartCpuSeconds.p50.toFixed(2)} s, max ${r.restartCpuSeconds.max.toFixed(2)} s`,
    ...r.failureLog.slice(0, 20),
    `reproduce: npm run crash-trials -- --trials ${r.trials} --seed ${r.seed}`
  ]
  process.stdout.write(lines.join('\n') + '\n')
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({
    options: { trials: { type: 'string', default: '200' }, seed: { type: 'string' }, 'image-mib': { type: 'string', default: '4' }, json: { type: 'boolean', default: false }, quiet: { type: 'boolean', default: false } },
    strict: true
  })
  const trials = Number(values.trials)
  const seed = values.seed === undefined ? Math.floor(Math.random() * 2 ** 31) : Number(values.seed)
  const imageMiB = Number(values['image-mib'])
  if (!Number.isSafeInteger(trials) || trials < 1 || trials > 100_000 || !Number.isSafeInteger(seed) || !(imageMiB >= 1 && imageMiB <= 1024)) {
    process.stderr.write('usage: crash-trials [--trials N (1..100000)] [--seed S] [--image-mib M (1..1024)] [--json] [--quiet]\n')
    process.exit(2)
  }
  const report = await runCrashTrials({ trials, seed, imageMiB, log: values.quiet === true ? undefined : line => process.stderr.write(line + '\n') })
  if (values.json === true) process.stdout.write(JSON.stringify(report) + '\n')
  else printReport(report)
  process.exitCode = report.failures === 0 ? 0 : 1
}
