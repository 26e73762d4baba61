// Start-up and at-rest cost of the daemon as an operator installs it (npm pack, npm install -g: compiled
// JavaScript) beside the same daemon run from the checkout through tsx, in one run:
//   startCpuS   CPU-seconds from exec to "vmthunderd started", restarting over a data dir with N images:
//               the median of --starts restarts (and their range: the machine is shared and noisy)
//   restRss     resident memory after --settle-s at rest
//   restCore    share of one core used over the next --rest-s at rest (p2p on, alone)
// Goals (issue 11): packaged start <= 0.3 CPU-s, RSS <= 150 MB, <= 1 % of a core at rest.
//   npm run bench:package -- [--images 10] [--starts 5] [--settle-s 5] [--rest-s 20] [--prefix DIR] [--keep-env] [--json]
// --prefix reuses an install made by an earlier run (its bin/vmthunderd); otherwise this packs and installs.
// The installed package's V8 code cache (written by its postinstall, bin/load-bundle.js) is reported too.
// NODE_EXTRA_CA_CERTS, when set, is removed from the daemons' environment (--keep-env keeps it): node reads and
// parses that CA file at exec, before any JavaScript, for TLS the daemon never makes (about 0.1 CPU-s on the
// 2-core dev VM), and systemd starts the daemon without it (packaging/systemd).

import '../src/polyfill.js'
import { parseArgs } from 'node:util'
import { join, dirname } from 'node:path'
import { existsSync, realpathSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import { startDaemon, makeTempDir, removeDir, DAEMON_BIN } from './lib/agent-process.js'
import { makeImage } from '../test/helpers/images.js'
import { packAndInstall } from './lib/package-install.js'
import { procUsage } from './lib/proc-usage.js'

const { values: opts } = parseArgs({
  options: {
    images: { type: 'string', default: '10' },
    starts: { type: 'string', default: '5' },
    'settle-s': { type: 'string', default: '5' },
    'rest-s': { type: 'string', default: '20' },
    prefix: { type: 'string' },
    json: { type: 'boolean', default: false },
    'keep-env': { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false }
  }
})
if (opts.help) {
  process.stdout.write('usage: npm run bench:package -- [--images 10] [--starts 5] [--settle-s 5] [--rest-s 20] [--prefix DIR] [--keep-env] [--json]\n')
  process.exit(0)
}
const imageCount = Number(opts.images)
const starts = Math.max(1, Number(opts.starts))
const settleMs = Number(opts['settle-s']) * 1000
const restMs = Number(opts['rest-s']) * 1000
const MiB = 1024 * 1024
const removedEnv = !opts['keep-env'] && process.env.NODE_EXTRA_CA_CERTS !== undefined
const daemonEnv: Record<string, string | undefined> = removedEnv ? { NODE_EXTRA_CA_CERTS: undefined } : {}
const GOALS = { startCpuS: 0.3, restRssMB: 150, restCorePct: 1 }

interface Figures { startCpuS: number, startCpuMinS: number, startCpuMaxS: number, startRssMB: number, restRssMB: number, restCorePct: number }

async function measure (label: string, bin: string | undefined, images: string[], work: string): Promise<Figures> {
  const dir = join(work, label)
  const p2p = ['--listen', '/ip4/127.0.0.1/tcp/0']
  // First run registers the images; the measured run restarts over that data dir, as a host reboot would.
  const first = await startDaemon({ dir, bin, args: p2p, timeoutMs: 120_000, allowImageDirs: [work], env: daemonEnv })
  for (const [i, path] of images.entries()) await first.call('image.register', { id: `img${i}`, path })
  await first.stop()
  const startCpuS: number[] = []
  for (let i = 1; i < starts; i++) {
    const daemon = await startDaemon({ dir, bin, args: p2p, timeoutMs: 120_000, allowImageDirs: [work], env: daemonEnv })
    try {
      startCpuS.push((await procUsage(daemon.process.pid!)).cpuSeconds)
    } finally {
      await daemon.stop()
    }
  }
  const daemon = await startDaemon({ dir, bin, args: p2p, timeoutMs: 120_000, allowImageDirs: [work], env: daemonEnv })
  try {
    const pid = daemon.process.pid!
    const atStart = await procUsage(pid)
    startCpuS.push(atStart.cpuSeconds)
    startCpuS.sort((a, b) => a - b)
    const status = await daemon.call('node.status')
    if (Object.keys(status.images).length !== images.length) throw new Error(`${label}: ${Object.keys(status.images).length} images after restart, want ${images.length}`)
    await sleep(settleMs)
    const before = await procUsage(pid)
    const t0 = process.hrtime.bigint()
    await sleep(restMs)
    const after = await procUsage(pid)
    const wallS = Number(process.hrtime.bigint() - t0) / 1e9
    return {
      startCpuS: startCpuS[Math.floor(startCpuS.length / 2)],
      startCpuMinS: startCpuS[0],
      startCpuMaxS: startCpuS[startCpuS.length - 1],
      startRssMB: atStart.rssBytes / 1e6,
      restRssMB: after.rssBytes / 1e6,
      restCorePct: (after.cpuSeconds - before.cpuSeconds) / wallS * 100
    }
  } finally {
    await daemon.stop()
  }
}

const work = await makeTempDir('vmt-bpkg')
try {
  const images: string[] = []
  for (let i = 0; i < imageCount; i++) {
    const path = join(work, `img${i}.raw`)
    await makeImage(path, 64 * MiB, [[i * MiB, MiB]])
    images.push(path)
  }
  const bin = opts.prefix !== undefined ? join(opts.prefix, 'bin', 'vmthunderd') : (await packAndInstall(work)).vmthunderd
  // The launcher is PREFIX/bin/vmthunderd -> the package's bin/vmthunderd.js; the cache sits in its dist/.
  const codeCache = existsSync(join(dirname(dirname(realpathSync(bin))), 'dist', 'vmthunderd.cjs.v8cache'))
  const packaged = await measure('packaged', bin, images, work)
  const tsx = await measure('tsx', undefined, images, work)
  if (opts.json) {
    process.stdout.write(JSON.stringify({ images: imageCount, starts, codeCache, removedNodeExtraCaCerts: removedEnv, packaged, tsx, goals: GOALS, bin, checkoutBin: DAEMON_BIN }, null, 2) + '\n')
  } else {
    const row = (name: string, f: Figures): string =>
      `${name.padEnd(10)} ${f.startCpuS.toFixed(2).padStart(11)} ${`${f.startCpuMinS.toFixed(2)}-${f.startCpuMaxS.toFixed(2)}`.padStart(11)} ${f.startRssMB.toFixed(0).padStart(12)} ${f.restRssMB.toFixed(0).padStart(11)} ${f.restCorePct.toFixed(2).padStart(12)}`
    process.stdout.write(`daemon start-up (median of ${starts} starts, range) and rest, ${imageCount} registered images, p2p on (alone); ` +
      `packaged code cache ${codeCache ? 'present' : 'ABSENT'}${removedEnv ? '; NODE_EXTRA_CA_CERTS removed from their environment (--keep-env keeps it)' : ''}\n`)
    process.stdout.write(`${'run'.padEnd(10)} ${'start CPU-s'.padStart(11)} ${'range'.padStart(11)} ${'start RSS MB'.padStart(12)} ${'rest RSS MB'.padStart(11)} ${'rest % core'.padStart(12)}\n`)
    process.stdout.write(row('packaged', packaged) + '\n' + row('tsx', tsx) + '\n')
    process.stdout.write(`packaged/tsx: start CPU ${(packaged.startCpuS / tsx.startCpuS).toFixed(2)}, rest RSS ${(packaged.restRssMB / tsx.restRssMB).toFixed(2)}\n`)
    process.stdout.write(`goals: start <= ${GOALS.startCpuS} CPU-s ${packaged.startCpuS <= GOALS.startCpuS ? 'met' : 'MISSED'}, ` +
      `RSS <= ${GOALS.restRssMB} MB ${packaged.restRssMB <= GOALS.restRssMB ? 'met' : 'MISSED'}, ` +
      `rest <= ${GOALS.restCorePct} % ${packaged.restCorePct <= GOALS.restCorePct ? 'met' : 'MISSED'}\n`)
  }
} finally {
  await removeDir(work)
}
