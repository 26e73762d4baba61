// Boots the small Debian guest built by scripts/build-guest.sh under QEMU (TCG) and watches its serial
// console for the marker its systemd unit writes once multi-user.target is reached. Used by the guest-boot
// integration tests and, later, by tests that boot the guest through vmthunderd's NBD export.
import { spawn, execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

export const BOOT_MARKER = 'VMTHUNDER-BOOT-OK'
export const DEFAULT_GUEST_DIR = '/var/cache/vmthunder/guest'
export const DEFAULT_CMDLINE = 'console=ttyS0 root=/dev/vda rw quiet panic=-1'
const CONSOLE_TAIL_CHARS = 8192
/** After the marker the guest powers itself off; give it this long before QEMU is killed. */
const DEFAULT_EXIT_GRACE_MS = 15_000
const KILL_GRACE_MS = 2_000
const BUILD_TIMEOUT_MS = 15 * 60_000

const REPO_ROOT = resolve(fileURLToPath(new URL('.', import.meta.url)), '..', '..')
export const BUILD_GUEST_SCRIPT = join(REPO_ROOT, 'scripts', 'build-guest.sh')

export interface GuestPaths {
  dir: string
  raw: string
  kernel: string
  initrd: string
  cmdline: string
}

export class GuestNotBuiltError extends Error {
  override name = 'GuestNotBuiltError'
}

export class GuestBuildError extends Error {
  override name = 'GuestBuildError'
}

export class QemuStartError extends Error {
  override name = 'QemuStartError'
}

function guestDir (dir?: string): string {
  return dir ?? process.env.VMTHUNDER_GUEST_DIR ?? DEFAULT_GUEST_DIR
}

/** The cached guest's paths, or undefined if scripts/build-guest.sh has not built it there. */
export function guestPaths (dir?: string): GuestPaths | undefined {
  const d = guestDir(dir)
  const paths: GuestPaths = {
    dir: d,
    raw: join(d, 'guest.raw'),
    kernel: join(d, 'vmlinuz'),
    initrd: join(d, 'initrd.img'),
    cmdline: DEFAULT_CMDLINE
  }
  for (const p of [paths.raw, paths.kernel, paths.initrd, join(d, 'stamp')]) {
    if (!existsSync(p)) return undefined
  }
  return paths
}

/**
 * Runs scripts/build-guest.sh (a no-op printing the paths when the cached guest is current; about 30-70 s
 * otherwise) and returns the paths it printed.
 */
export async function buildGuest (opts: { dir?: string, signal?: AbortSignal, timeoutMs?: number } = {}): Promise<GuestPaths> {
  const args = [BUILD_GUEST_SCRIPT]
  if (opts.dir !== undefined) args.push('--out', opts.dir)
  const stdout = await new Promise<string>((resolve, reject) => {
    execFile('bash', args, {
      signal: opts.signal,
      timeout: opts.timeoutMs ?? BUILD_TIMEOUT_MS,
      killSignal: 'SIGTERM',
      maxBuffer: 16 * 1024 * 1024
    }, (err, out, errOut) => {
      if (err != null) {
        if (opts.signal?.aborted === true) { reject(opts.signal.reason); return }
        reject(new GuestBuildError(`build-guest.sh failed: ${err.message}\n${String(errOut).slice(-4000)}`))
        return
      }
      resolve(String(out))
    })
  })
  const kv = new Map<string, string>()
  for (const line of stdout.split('\n')) {
    const i = line.indexOf('=')
    if (i > 0) kv.set(line.slice(0, i), line.slice(i + 1))
  }
  const raw = kv.get('GUEST_RAW')
  const kernel = kv.get('GUEST_KERNEL')
  const initrd = kv.get('GUEST_INITRD')
  if (raw === undefined || kernel === undefined || initrd === undefined) {
    throw new GuestBuildError(`build-guest.sh printed no paths: ${stdout.slice(-2000)}`)
  }
  return { dir: resolve(raw, '..'), raw, kernel, initrd, cmdline: kv.get('GUEST_CMDLINE') ?? DEFAULT_CMDLINE }
}

/**
 * Creates a qcow2 overlay at `path` whose backing file is `backing` (a file path, or an NBD URI such as
 * `nbd+unix:///guest?socket=/run/x.sock`; qemu-img opens it to learn the size, so the server must be up).
 */
export async function createOverlay (opts: { path: string, backing: string, backingFormat: string, signal?: AbortSignal }): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    execFile('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', opts.backing, '-F', opts.backingFormat, opts.path],
      { signal: opts.signal, timeout: 30_000 }, (err, _out, errOut) => {
        if (err != null) {
          reject(opts.signal?.aborted === true ? opts.signal.reason : new Error(`qemu-img create failed: ${err.message} ${String(errOut)}`))
          return
        }
        resolve()
      })
  })
}

export interface BootGuestOptions {
  /** A file path (raw or qcow2 overlay) or an NBD URI (`nbd+unix:///EXPORT?socket=PATH`). */
  drive: string
  /** QEMU format of `drive`: 'raw' for an NBD URI or the raw image, 'qcow2' for an overlay. */
  format: string
  kernel: string
  initrd: string
  /** Kernel command line; defaults to DEFAULT_CMDLINE. */
  cmdline?: string
  /** Kill QEMU and return markerSeen: false after this long. */
  timeoutMs: number
  signal?: AbortSignal
  /** Called with each console line (escape sequences stripped). */
  log?: (line: string) => void
  marker?: string
  cpus?: number
  memoryMiB?: number
  /** How long the guest may take to power off after the marker before QEMU is killed. */
  exitGraceMs?: number
  /** Extra QEMU arguments, appended last. */
  extraArgs?: string[]
}

export interface BootResult {
  markerSeen: boolean
  /** From QEMU's start to the marker (or to the end when it was not seen). */
  elapsedMs: number
  /** The last few KiB of the console (and QEMU's stderr), escape sequences stripped. */
  consoleTail: string
  /** QEMU's exit code; null when it had to be killed. */
  exitCode: number | null
  timedOut: boolean
}

// CSI sequences, OSC-free: SeaBIOS and systemd colour their output.
// eslint-disable-next-line no-control-regex
const ANSI = /\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\x1bc/g

/**
 * Boots the guest from `drive` with QEMU under TCG and resolves once QEMU has exited (the guest powers off
 * after the marker), or once the timeout killed it. Rejects with the signal's reason when aborted (QEMU is
 * killed first), and with QemuStartError when QEMU cannot be spawned.
 */
export async function bootGuest (opts: BootGuestOptions): Promise<BootResult> {
  opts.signal?.throwIfAborted()
  const marker = opts.marker ?? BOOT_MARKER
  const args = [
    '-accel', 'tcg',
    '-smp', String(opts.cpus ?? 2),
    '-m', String(opts.memoryMiB ?? 512),
    '-nographic', '-no-reboot', '-nic', 'none',
    '-kernel', opts.kernel,
    '-initrd', opts.initrd,
    '-append', opts.cmdline ?? DEFAULT_CMDLINE,
    '-drive', `file=${opts.drive},format=${opts.format},if=virtio`,
    ...(opts.extraArgs ?? [])
  ]
  const startedAt = performance.now()
  const child = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'pipe', 'pipe'] })

  let tail = ''
  let partial = ''
  let markerSeen = false
  let markerAt = 0
  let timedOut = false
  let killed = false
  let timers: NodeJS.Timeout[] = []

  const kill = (): void => {
    if (killed || child.exitCode !== null || child.signalCode !== null) return
    killed = true
    child.kill('SIGTERM')
    const t = setTimeout(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') }, KILL_GRACE_MS)
    t.unref()
    timers.push(t)
  }

  const onData = (chunk: Buffer): void => {
    const text = chunk.toString('utf8').replace(ANSI, '').replace(/\r/g, '')
    tail = (tail + text).slice(-CONSOLE_TAIL_CHARS)
    partial += text
    const lines = partial.split('\n')
    partial = lines.pop() ?? ''
    if (partial.length > CONSOLE_TAIL_CHARS) partial = partial.slice(-CONSOLE_TAIL_CHARS)
    for (const line of lines) {
      opts.log?.(line)
      if (!markerSeen && line.includes(marker)) {
        markerSeen = true
        markerAt = performance.now()
        const t = setTimeout(kill, opts.exitGraceMs ?? DEFAULT_EXIT_GRACE_MS)
        timers.push(t)
      }
    }
  }
  child.stdout.on('data', onData)
  child.stderr.on('data', onData)

  const onAbort = (): void => { kill() }
  opts.signal?.addEventListener('abort', onAbort, { once: true })
  timers.push(setTimeout(() => { if (!markerSeen) { timedOut = true; kill() } }, opts.timeoutMs))

  try {
    const exitCode = await new Promise<number | null>((resolve, reject) => {
      child.once('error', (err) => { reject(new QemuStartError(`cannot start qemu-system-x86_64: ${err.message}`)) })
      child.once('close', (code) => { resolve(code) })
    })
    if (partial !== '') {
      opts.log?.(partial)
      if (!markerSeen && partial.includes(marker)) { markerSeen = true; markerAt = performance.now() }
    }
    if (opts.signal?.aborted === true) throw opts.signal.reason
    return {
      markerSeen,
      elapsedMs: Math.round((markerSeen ? markerAt : performance.now()) - startedAt),
      consoleTail: tail,
      exitCode: killed ? null : exitCode,
      timedOut
    }
  } finally {
    opts.signal?.removeEventListener('abort', onAbort)
    for (const t of timers) clearTimeout(t)
    timers = []
    kill()
  }
}

export interface NbdkitServer {
  socket: string
  /** `nbd+unix:///EXPORT?socket=SOCKET` (nbdkit's file plugin serves any export name). */
  uri: (exportName?: string) => string
  /** Stops nbdkit and waits for it to exit; returns the stats filter's report when `statsFile` was given. */
  stop: () => Promise<string | undefined>
}

/**
 * Serves `file` read-only over NBD on a unix socket with nbdkit in captive mode (`--run`): nbdkit runs its
 * --run command only once it listens, so the line it prints is the readiness signal, and the command (a
 * `cat` of our stdin pipe) ends when we close the pipe or die, which makes nbdkit exit: no orphan.
 */
export async function startNbdkitFile (opts: { file: string, socket: string, statsFile?: string, signal?: AbortSignal, timeoutMs?: number }): Promise<NbdkitServer> {
  opts.signal?.throwIfAborted()
  const args = ['-r', '-U', opts.socket]
  if (opts.statsFile !== undefined) args.push('--filter=stats')
  args.push('file', opts.file)
  if (opts.statsFile !== undefined) args.push(`statsfile=${opts.statsFile}`)
  args.push('--run', 'echo NBDKIT-READY; exec cat >/dev/null')
  const child = spawn('nbdkit', args, { stdio: ['pipe', 'pipe', 'pipe'] })
  let out = ''
  const exited = new Promise<number | null>((resolve) => { child.once('close', (code) => { resolve(code) }) })
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => { finish(new Error(`nbdkit not ready after ${opts.timeoutMs ?? 10_000} ms: ${out}`)) }, opts.timeoutMs ?? 10_000)
    const onAbort = (): void => { finish(opts.signal?.reason) }
    const finish = (err?: unknown): void => {
      clearTimeout(timer)
      opts.signal?.removeEventListener('abort', onAbort)
      child.stdout.off('data', onData)
      if (err === undefined) { resolve(); return }
      child.kill('SIGKILL')
      reject(err)
    }
    const onData = (b: Buffer): void => {
      out += b.toString()
      if (out.includes('NBDKIT-READY')) finish()
    }
    child.stdout.on('data', onData)
    child.stderr.on('data', (b: Buffer) => { out = (out + b.toString()).slice(-4000) })
    child.once('error', (err) => { finish(new Error(`cannot start nbdkit: ${err.message}`)) })
    child.once('close', (code) => { finish(new Error(`nbdkit exited (${String(code)}) before ready: ${out}`)) })
    opts.signal?.addEventListener('abort', onAbort, { once: true })
  })
  child.stdout.resume()
  return {
    socket: opts.socket,
    uri: (exportName = 'guest') => `nbd+unix:///${exportName}?socket=${opts.socket}`,
    stop: async () => {
      child.stdin.end()
      const t = setTimeout(() => { child.kill('SIGKILL') }, 10_000)
      await exited
      clearTimeout(t)
      if (opts.statsFile === undefined) return undefined
      const { readFile } = await import('node:fs/promises')
      return await readFile(opts.statsFile, 'utf8').catch(() => undefined)
    }
  }
}
