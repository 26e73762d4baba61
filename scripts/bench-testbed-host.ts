// One benchmark host, run inside its testbed namespace by scripts/bench-testbed.ts. It prepares, prints
// READY, waits for GO on stdin (so every host starts at the same moment), then fetches what it needs and
// replays the boot trace, prints one DONE line of JSON, and (for BitTorrent) keeps seeding until STOP or
// until stdin closes.
//
//   nbd   --trace F (--socket PATH | --host IP --port P) [--export NAME]   replay over NBD
//   http  --trace F --url URL --dest FILE                                   curl the whole image, replay locally
//   bt    --trace F --torrent FILE --dir DIR --dest DIR/NAME                aria2c (seed on), replay locally
//   vmt   --trace F --rpc PATH --socket PATH --export ID --name VM [--create at-go|before]
//         vmthunderd: `instance.create {name: VM, image: ID}` on the host's agent (at GO, timed, as a VM boot
//         would; or before READY), then replay over the agent's NBD export. If the agent dies mid-replay (the
//         failure run kills it), waits for RESUME on stdin (the orchestrator restarted it), reconnects and
//         retries the read that failed.
import { spawn, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import { writeFile, watch } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { loadTrace, nbdConnect, replayNbd, replayNbdResumable, replayFile, type ReplayResult } from './lib/nbd-replay.js'
import { callRpc } from '../src/rpc/client.js'

const LIFETIME_MS = Number(process.env.VMTB_HOST_LIFETIME_MS ?? 3_600_000)
setTimeout(() => { console.error('bench-host: lifetime exceeded'); process.exit(3) }, LIFETIME_MS).unref()

const [mode, ...rest] = process.argv.slice(2)
const opt = new Map<string, string>()
for (let i = 0; i < rest.length; i += 2) opt.set(rest[i].replace(/^--/, ''), rest[i + 1])
const RPC_TIMEOUT_MS = 120_000
/** --think 1: each read at its trace time (the boot's own pace), not back to back. */
const think = opt.get('think') === '1'
/** How long a driver whose agent died waits for the orchestrator's RESUME. */
const RESUME_TIMEOUT_MS = 120_000
const need = (k: string): string => {
  const v = opt.get(k)
  if (v === undefined) { console.error(`bench-host: --${k} is required for ${mode}`); process.exit(2) }
  return v
}

const children: ChildProcess[] = []
const lines = createInterface({ input: process.stdin })
const stdinLines: string[] = []
let lineWaiter: (() => void) | undefined
let stdinClosed = false
lines.on('line', (l) => { stdinLines.push(l.trim()); lineWaiter?.() })
lines.on('close', () => { stdinClosed = true; lineWaiter?.() })
async function waitLine (want: string): Promise<boolean> {
  while (true) {
    const i = stdinLines.indexOf(want)
    if (i >= 0) { stdinLines.splice(i, 1); return true }
    if (stdinClosed) return false
    await new Promise<void>((resolve) => { lineWaiter = resolve })
  }
}
function shutdown (code: number): never {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGTERM')
  process.exit(code)
}
process.on('SIGTERM', () => shutdown(143))

function runToEnd (cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const c = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] })
    children.push(c)
    let err = ''
    c.stderr?.on('data', (b: Buffer) => { err = (err + b.toString()).slice(-2000) })
    c.once('error', reject)
    c.once('close', (code) => { code === 0 ? resolve() : reject(new Error(`${cmd} exited ${String(code)}: ${err}`)) })
  })
}

async function main (): Promise<void> {
  const trace = await loadTrace(need('trace'))
  let prepare: () => Promise<void> = async () => {}
  let run: () => Promise<{ replay: ReplayResult, fetchMs?: number, reconnects?: number }>

  if (mode === 'nbd') {
    run = async () => {
      const conn = await nbdConnect(opt.has('socket')
        ? { socketPath: need('socket'), exportName: opt.get('export') ?? '' }
        : { host: need('host'), port: Number(need('port')), exportName: opt.get('export') ?? '' })
      const replay = await replayNbd(trace, conn, undefined, { think })
      await conn.close()
      return { replay }
    }
  } else if (mode === 'vmt') {
    const rpc = need('rpc')
    const socketPath = need('socket')
    const exportName = need('export')
    const name = need('name')
    const create = async (): Promise<void> => { await callRpc(rpc, 'instance.create', { name, image: exportName }, { timeoutMs: RPC_TIMEOUT_MS }) }
    if (opt.get('create') === 'before') prepare = create
    run = async () => {
      const t0 = performance.now()
      if (opt.get('create') !== 'before') await create()
      const fetchMs = performance.now() - t0 // here: the time instance.create took
      const replay = await replayNbdResumable(trace, {
        think,
        connect: async () => await nbdConnect({ socketPath, exportName }),
        onLost: async (err) => {
          console.error(`bench-host: agent lost (${err.message}); waiting for RESUME`)
          const timer = setTimeout(() => { console.error('bench-host: no RESUME in time'); shutdown(1) }, RESUME_TIMEOUT_MS)
          const ok = await waitLine('RESUME')
          clearTimeout(timer)
          if (!ok) throw new Error('stdin closed while waiting for RESUME')
        }
      })
      return { replay, fetchMs, reconnects: replay.reconnects }
    }
  } else if (mode === 'http') {
    const url = need('url')
    const dest = need('dest')
    run = async () => {
      const t0 = performance.now()
      await runToEnd('curl', ['-sS', '--fail', '--max-time', '3000', '-o', dest, url])
      const fetchMs = performance.now() - t0
      return { replay: await replayFile(trace, dest, undefined, { think }), fetchMs }
    }
  } else if (mode === 'bt') {
    const torrent = need('torrent')
    const dir = need('dir')
    const dest = need('dest') // where the torrent's single file lands (DIR/NAME)
    const hook = join(dir, '.on-complete.sh')
    const marker = join(dir, '.complete')
    prepare = async () => {
      await writeFile(hook, `#!/bin/sh\necho "$3" > '${marker}'\n`, { mode: 0o755 })
    }
    run = async () => {
      const t0 = performance.now()
      const ac = new AbortController()
      const seen = (async () => {
        for await (const _ of watch(dir, { signal: ac.signal })) if (existsSync(marker)) return
      })().catch(() => {})
      // Seeds on after completion (seed-ratio 0.0 = regardless of ratio) until we are told to stop.
      const aria = spawn('aria2c', [
        `--dir=${dir}`, '--seed-ratio=0.0', '--enable-dht=false', '--enable-dht6=false', '--bt-enable-lpd=false',
        '--enable-peer-exchange=true', '--file-allocation=none', '--check-integrity=false', '--bt-hash-check-seed=false',
        '--bt-tracker-interval=1', '--bt-max-peers=0', '--summary-interval=0', '--console-log-level=warn',
        '--allow-overwrite=true', '--auto-file-renaming=false', '--listen-port=6881', '--disable-ipv6=true',
        `--stop-with-process=${process.pid}`, `--on-bt-download-complete=${hook}`, torrent
      ], { stdio: ['ignore', 'ignore', 'inherit'] })
      children.push(aria)
      const exited = new Promise<never>((_resolve, reject) => { aria.once('close', (code) => { reject(new Error(`aria2c exited early (${String(code)})`)) }) })
      exited.catch(() => {})
      if (!existsSync(marker)) await Promise.race([seen, exited])
      ac.abort()
      const fetchMs = performance.now() - t0
      return { replay: await replayFile(trace, dest, undefined, { think }), fetchMs }
    }
  } else {
    console.error(`bench-host: unknown mode ${String(mode)}`)
    process.exit(2)
  }

  await prepare()
  console.log('READY')
  if (!await waitLine('GO')) shutdown(0)
  const t0 = performance.now()
  const { replay, fetchMs, reconnects } = await run()
  console.log(`DONE ${JSON.stringify({ doneMs: performance.now() - t0, fetchMs, replayMs: replay.elapsedMs, maxReadMs: replay.maxReadMs, firstReadMs: replay.firstReadMs, readMsP50: replay.readMsP50, readMsP90: replay.readMsP90, bytes: replay.bytes, digest: replay.digest, reconnects, slowReads: replay.slowReads })}`)
  // BitTorrent hosts keep seeding for the others until the orchestrator says STOP (or goes away).
  if (mode === 'bt') await waitLine('STOP')
  shutdown(0)
}

main().catch((err: Error) => { console.error(`bench-host: ${err.message}`); shutdown(1) })
