// NBD benchmark: vmthunderd's NBD export of a fully cached image (the real daemon: NBD server + block cache)
// and our NBD server alone on the file, against `nbdkit file` on the same image, same clients, same run.
//
//   bash scripts/bench-nbd.sh [--json] [--runtime-s 5] [--reps 1] [--size-mib 1024] [--dir DIR] [--image FILE]
//                             [--export-module M.ts --module-arg X] [--server-only] [--sync-read-max BYTES] [--no-pool]
//
// Builds a test image (random data, one 4 MiB hole in every 128 MiB: 97 % allocated) unless --image is
// given, serves it with scripts/bench-nbd-serve.ts and with `nbdkit -r file`, both on unix sockets, warms
// the page cache and every server (three untimed nbdcopy each), then runs each client against every server
// in turn: nbdcopy of the whole export to null:, fio (nbd engine) sequential 1 MiB reads QD16, random
// 4 KiB reads QD32 and QD1. Prints figures and the ratio ours/nbdkit (above 1: we are faster).
//
// `vmthunderd` is a real daemon (--no-p2p) that registered the image: reads go through its block cache (a
// copy of the image in its data dir). --server-only leaves it out. With the file export two variants of our
// server run: `ours` (reads up to --sync-read-max, default 64 KiB,
// done with readSync on the event loop; larger ones on libuv's thread pool) and `ours-async` (every read on
// the thread pool). With --export-module only `ours` runs, serving that module's export (see
// bench-nbd-serve.ts): that is how the bench is pointed at the block cache.

import { startDaemon } from './lib/agent-process.js'
import { spawn, execFile, type ChildProcess } from 'node:child_process'
import { randomFillSync } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdtemp, open, readFile, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { parseArgs, promisify } from 'node:util'

const execFileAsync = promisify(execFile)
const REPO = resolve(import.meta.dirname, '..')
const HOLE_EVERY_BYTES = 128 * 1024 * 1024
const HOLE_BYTES = 4 * 1024 * 1024
const SERVER_START_TIMEOUT_MS = 30_000
const DEFAULT_BENCH_SYNC_READ_MAX_BYTES = 65536
const BASELINE = 'nbdkit'
const WARM_UP_COPIES = 3
const NBDCOPY_COPIES = 3

const { values: args } = parseArgs({
  options: {
    json: { type: 'boolean', default: false },
    'runtime-s': { type: 'string', default: '5' },
    reps: { type: 'string', default: '1' },
    'size-mib': { type: 'string', default: '1024' },
    dir: { type: 'string' },
    image: { type: 'string' },
    'export-module': { type: 'string' },
    'server-only': { type: 'boolean', default: false },
    'module-arg': { type: 'string' },
    'sync-read-max': { type: 'string', default: String(DEFAULT_BENCH_SYNC_READ_MAX_BYTES) },
    'no-pool': { type: 'boolean', default: false }
  }
})
const runtimeS = Number(args['runtime-s'])
const reps = Number(args.reps)
const log = (msg: string): void => { process.stderr.write(`bench-nbd: ${msg}\n`) }

interface Server { name: string, uri: string, stop: () => Promise<void> }

interface Measure {
  test: string
  unit: string
  /** Median over reps, per server name. */
  values: Record<string, number>
  extra: Record<string, Record<string, number>>
}

async function buildImage (path: string, sizeBytes: number): Promise<void> {
  log(`building ${sizeBytes / 1048576} MiB test image ${path}`)
  const fh = await open(path, 'w')
  try {
    await fh.truncate(sizeBytes)
    const chunk = Buffer.allocUnsafe(4 * 1024 * 1024)
    for (let off = 0; off < sizeBytes; off += chunk.length) {
      if (off % HOLE_EVERY_BYTES === HOLE_EVERY_BYTES - HOLE_BYTES) continue
      randomFillSync(chunk)
      await fh.write(chunk, 0, Math.min(chunk.length, sizeBytes - off), off)
    }
  } finally {
    await fh.close()
  }
}

function waitForReady (child: ChildProcess, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { reject(new Error(`${what} did not start in ${SERVER_START_TIMEOUT_MS} ms`)) }, SERVER_START_TIMEOUT_MS)
    let out = ''
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString()
      if (out.includes('ready')) { clearTimeout(timer); resolve() }
    })
    child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`${what} exited with ${code}`)) })
  })
}

function stopChild (child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise(resolve => {
    child.once('exit', () => { resolve() })
    child.kill('SIGTERM')
  })
}

async function startOurs (name: string, image: string, sock: string, syncReadMax: string): Promise<Server> {
  const serveArgs = ['--import', 'tsx', join(REPO, 'scripts/bench-nbd-serve.ts'), '--socket', sock]
  if (args['export-module'] !== undefined) {
    serveArgs.push('--export-module', args['export-module'])
    if (args['module-arg'] !== undefined) serveArgs.push('--module-arg', args['module-arg'])
  } else {
    serveArgs.push('--file', image, '--sync-read-max', syncReadMax)
    if (args['no-pool']) serveArgs.push('--no-pool')
  }
  const child = spawn(process.execPath, serveArgs, { cwd: REPO, stdio: ['ignore', 'pipe', 'inherit'] })
  await waitForReady(child, `our server (${name})`)
  return { name, uri: `nbd+unix:///?socket=${sock}`, stop: () => stopChild(child) }
}

/** The real daemon with the image registered: its NBD export reads through the fully cached block cache. */
async function startVmthunderd (image: string, dir: string): Promise<Server> {
  const daemon = await startDaemon({ dir: join(dir, 'vmthunderd'), args: ['--no-p2p'], allowImageDirs: [dirname(image)] })
  try {
    await daemon.call('image.register', { id: 'bench', path: image })
  } catch (err) {
    await daemon.stop()
    throw err
  }
  return { name: 'vmthunderd', uri: daemon.nbdUri('bench'), stop: async () => { await daemon.stop() } }
}

async function startNbdkit (image: string, sock: string, dir: string): Promise<Server> {
  const pidFile = join(dir, 'nbdkit.pid')
  // -f: foreground (we own the process); -P: written once the socket accepts connections.
  const child = spawn('nbdkit', ['-f', '-r', '-P', pidFile, '--unix', sock, 'file', image], { stdio: ['ignore', 'inherit', 'inherit'] })
  const deadline = Date.now() + SERVER_START_TIMEOUT_MS
  while (!existsSync(pidFile)) {
    if (child.exitCode !== null) throw new Error(`nbdkit exited with ${child.exitCode}`)
    if (Date.now() > deadline) throw new Error('nbdkit did not start')
    await new Promise(resolve => setTimeout(resolve, 20))
  }
  return { name: BASELINE, uri: `nbd+unix:///?socket=${sock}`, stop: () => stopChild(child) }
}

/** Copies the export `copies` times in a row (one copy takes well under a second: too short to time alone). */
async function nbdcopyMiBs (server: Server, sizeBytes: number, copies: number): Promise<number> {
  const t0 = process.hrtime.bigint()
  for (let i = 0; i < copies; i++) await execFileAsync('nbdcopy', [server.uri, 'null:'])
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9
  return copies * sizeBytes / 1048576 / seconds
}

interface FioResult { iops: number, mibs: number, p50us: number, p99us: number }

async function fio (server: Server, dir: string, rw: string, bs: string, iodepth: number, sizeBytes: number): Promise<FioResult> {
  const out = join(dir, 'fio.json')
  await execFileAsync('fio', [
    '--name=bench', '--ioengine=nbd', `--uri=${server.uri}`, `--rw=${rw}`, `--bs=${bs}`, `--iodepth=${iodepth}`,
    `--size=${sizeBytes}`, `--runtime=${runtimeS}`, '--time_based', '--ramp_time=1', '--output-format=json', `--output=${out}`
  ], { timeout: (runtimeS + 60) * 1000 })
  const job = JSON.parse(await readFile(out, 'utf8')).jobs[0].read
  const pct = job.clat_ns.percentile as Record<string, number>
  return { iops: job.iops, mibs: job.bw / 1024, p50us: pct['50.000000'] / 1000, p99us: pct['99.000000'] / 1000 }
}

function median (xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  const mid = Math.floor(s.length / 2)
  return s.length % 2 === 1 ? s[mid] : (s[mid - 1] + s[mid]) / 2
}

type Run = (s: Server, sizeBytes: number, dir: string) => Promise<{ value: number, extra?: Record<string, number> }>

const fioTest = (rw: string, bs: string, qd: number, metric: 'mibs' | 'iops'): Run => async (s, sizeBytes, dir) => {
  const r = await fio(s, dir, rw, bs, qd, sizeBytes)
  return { value: r[metric], extra: { p50us: r.p50us, p99us: r.p99us } }
}

const TESTS: Array<{ test: string, unit: string, run: Run }> = [
  {
    test: `nbdcopy whole export -> null: x${NBDCOPY_COPIES}`,
    unit: 'MiB/s',
    run: async (s, sizeBytes) => ({ value: await nbdcopyMiBs(s, sizeBytes, NBDCOPY_COPIES) })
  },
  { test: 'fio seq read 1 MiB QD16', unit: 'MiB/s', run: fioTest('read', '1m', 16, 'mibs') },
  { test: 'fio rand read 4 KiB QD32', unit: 'IOPS', run: fioTest('randread', '4k', 32, 'iops') },
  { test: 'fio rand read 4 KiB QD1', unit: 'IOPS', run: fioTest('randread', '4k', 1, 'iops') }
]

function printTable (results: Measure[], servers: Server[], ours: string[], sizeBytes: number): void {
  const ratio = (r: Measure, name: string): number => r.values[name] / r.values[BASELINE]
  const rows = results.map(r => {
    const cell = (name: string): string => {
      const p50 = r.extra[name]?.p50us
      return `${r.values[name].toFixed(0)}${p50 !== undefined ? ` (p50 ${p50.toFixed(0)} us)` : ''}`
    }
    return [r.test, r.unit, ...servers.map(x => cell(x.name)), ...ours.map(n => ratio(r, n).toFixed(2))]
  })
  const header = ['test', 'unit', ...servers.map(x => x.name === BASELINE ? 'nbdkit file' : x.name === 'ours' ? 'nbd server on file' : x.name), ...ours.map(n => `${n}/nbdkit`)]
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map(r => r[i].length)))
  const line = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd()
  const exportDesc = args['export-module'] ??
    `file (ours: readSync up to ${args['sync-read-max']} B, thread pool above; ours-async: thread pool only)`
  process.stdout.write(`image ${sizeBytes / 1048576} MiB, export ${exportDesc}, fio runtime ${runtimeS} s, median of ${reps}\n`)
  process.stdout.write(line(header) + '\n' + line(widths.map(w => '-'.repeat(w))) + '\n')
  for (const r of rows) process.stdout.write(line(r) + '\n')
}

async function main (): Promise<void> {
  const dir = args.dir ?? await mkdtemp(join(tmpdir(), 'bench-nbd-'))
  const ownDir = args.dir === undefined
  const image = args.image ?? join(dir, 'image.raw')
  const servers: Server[] = []
  try {
    if (args.image === undefined) await buildImage(image, Number(args['size-mib']) * 1048576)
    const sizeBytes = (await stat(image)).size
    // Warm the page cache so every server reads from memory.
    await execFileAsync('dd', [`if=${image}`, 'of=/dev/null', 'bs=4M'])
    // The daemon itself (NBD server + block cache), then the NBD server alone on the file, then nbdkit.
    if (args['export-module'] === undefined && !args['server-only']) servers.push(await startVmthunderd(image, dir))
    servers.push(await startOurs('ours', image, join(dir, 'ours.sock'), args['sync-read-max']))
    if (args['export-module'] === undefined && Number(args['sync-read-max']) > 0) {
      servers.push(await startOurs('ours-async', image, join(dir, 'ours-async.sock'), '0'))
    }
    servers.push(await startNbdkit(image, join(dir, 'nbdkit.sock'), dir))
    const ours = servers.filter(x => x.name !== BASELINE).map(x => x.name)
    // Untimed passes: a fresh node process needs a few GiB served before its JIT, heap sizing and buffer
    // pool reach steady state (measured: the first two copies ~1.5x slower); a daemon runs warm.
    for (const s of servers) {
      log(`warm-up: ${s.name}`)
      for (let i = 0; i < WARM_UP_COPIES; i++) await nbdcopyMiBs(s, sizeBytes, 1)
    }

    const results: Measure[] = []
    for (const t of TESTS) {
      const samples: Record<string, number[]> = {}
      const extras: Record<string, Record<string, number[]>> = {}
      for (let rep = 0; rep < reps; rep++) {
        // Alternate the order so no server always runs first.
        const order = rep % 2 === 0 ? servers : [...servers].reverse()
        for (const s of order) {
          log(`${t.test}: ${s.name} (rep ${rep + 1}/${reps})`)
          const r = await t.run(s, sizeBytes, dir)
          ;(samples[s.name] ??= []).push(r.value)
          for (const [k, v] of Object.entries(r.extra ?? {})) ((extras[s.name] ??= {})[k] ??= []).push(v)
        }
      }
      const values: Record<string, number> = {}
      const extra: Record<string, Record<string, number>> = {}
      for (const s of servers) {
        values[s.name] = median(samples[s.name])
        for (const [k, v] of Object.entries(extras[s.name] ?? {})) (extra[s.name] ??= {})[k] = median(v)
      }
      results.push({ test: t.test, unit: t.unit, values, extra })
    }

    if (args.json) {
      process.stdout.write(JSON.stringify({
        sizeBytes,
        runtimeS,
        reps,
        export: args['export-module'] ?? 'file',
        syncReadMaxBytes: Number(args['sync-read-max']),
        results: results.map(r => ({
          ...r,
          ratios: Object.fromEntries(ours.map(n => [`${n}/${BASELINE}`, r.values[n] / r.values[BASELINE]]))
        }))
      }, null, 2) + '\n')
    } else {
      printTable(results, servers, ours, sizeBytes)
    }
  } finally {
    for (const s of servers) await s.stop()
    if (ownDir) await rm(dir, { recursive: true, force: true })
  }
}

await main()
