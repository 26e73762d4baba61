// Starts real vmthunderd processes (for the demo, benchmarks and integration tests), each in its own short temp dir (unix socket paths
// must stay under 108 bytes), and waits for their "started" log line rather than sleeping.

import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { callRpc } from '../../src/rpc/client.js'

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
export const DAEMON_BIN = join(ROOT, 'bin', 'vmthunderd.js')
export const CTL_BIN = join(ROOT, 'bin', 'vmthunderctl.js')
/**
 * The node flags bin/vmthunderd.js's first line runs the agent with (bin/v8-flags.js): a launcher that runs
 * `node DAEMON_BIN` passes them, so it runs what the installed command runs (and its code cache is accepted).
 */
export const AGENT_NODE_FLAGS: readonly string[] = createRequire(import.meta.url)('../../bin/v8-flags.js').AGENT_NODE_FLAGS
/** The environment bin/vmthunderd.js's first line sets too (bin/v8-flags.js's AGENT_ENV, added to `env`). */
export const agentEnv: (env?: NodeJS.ProcessEnv) => NodeJS.ProcessEnv = createRequire(import.meta.url)('../../bin/v8-flags.js').agentEnv

export interface TestDaemon {
  dir: string
  dataDir: string
  socket: string
  nbdSocket: string
  process: ChildProcess
  log: () => string
  call: (method: string, params?: Record<string, unknown>) => Promise<any>
  nbdUri: (imageId: string) => string
  /** SIGTERM and wait for exit. */
  stop: () => Promise<number | null>
  /** SIGKILL and wait for exit. */
  kill: () => Promise<void>
  exited: Promise<number | null>
}

export async function makeTempDir (prefix = 'vmt'): Promise<string> {
  return await mkdtemp(join('/tmp', `${prefix}-`))
}

export interface StartDaemonOptions {
  dir?: string
  args?: string[]
  /** Added to this process's environment; an undefined value removes the variable. */
  env?: Record<string, string | undefined>
  timeoutMs?: number
  /** Directories image.register may export files from (--allow-image-dir); none by default, as in production. */
  allowImageDirs?: string[]
  /** A command the daemon runs under, e.g. ['setpriv', '--reuid=65534', ...] to run it as its own user. */
  wrapper?: string[]
  /** The vmthunderd executable to run (default: this checkout's bin/vmthunderd.js under this node). */
  bin?: string
}

export async function startDaemon (options: StartDaemonOptions = {}): Promise<TestDaemon> {
  const dir = options.dir ?? await makeTempDir()
  const dataDir = join(dir, 'data')
  const socket = join(dir, 'ctl.sock')
  const nbdSocket = join(dir, 'nbd.sock')
  const allow = (options.allowImageDirs ?? []).flatMap(d => ['--allow-image-dir', d])
  const args = ['--data-dir', dataDir, '--socket', socket, ...allow, ...(options.args ?? ['--no-p2p'])]
  // VMT_AGENT_NODE_ARGS (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof") goes to each daemon's node: for profiling.
  // With it, a given `bin` (a daemon's JavaScript entry, as the benches' VMTB_DAEMON_BIN) runs under this node
  // with the agent's flags too; without it, `bin` runs as it is (its own shebang line).
  const nodeArgs = (process.env.VMT_AGENT_NODE_ARGS ?? '').split(' ').filter(x => x !== '')
  const daemon = options.bin === undefined || nodeArgs.length > 0
    ? [process.execPath, ...AGENT_NODE_FLAGS, ...nodeArgs, options.bin ?? DAEMON_BIN]
    : [options.bin]
  const [command, ...commandArgs] = [...(options.wrapper ?? []), ...daemon, ...args]
  const child = spawn(command, commandArgs, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...agentEnv(process.env), ...options.env } })
  let output = ''
  const exited = new Promise<number | null>(resolve => child.once('exit', code => resolve(code)))
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`daemon did not start in time:\n${output}`)) }, options.timeoutMs ?? 30_000)
    const onData = (chunk: Buffer): void => {
      output += chunk.toString()
      if (output.length > 4_000_000) output = output.slice(-2_000_000)
      if (output.includes('"message":"vmthunderd started"')) { clearTimeout(timer); resolve() }
    }
    child.stderr!.on('data', onData)
    child.stdout!.on('data', onData)
    void exited.then(code => { clearTimeout(timer); reject(new Error(`daemon exited with ${code} before starting:\n${output}`)) })
  })
  return {
    dir,
    dataDir,
    socket,
    nbdSocket,
    process: child,
    log: () => output,
    call: async (method, params = {}) => await callRpc(socket, method, params, { timeoutMs: 120_000 }),
    nbdUri: imageId => `nbd+unix:///${imageId}?socket=${nbdSocket}`,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
      return await exited
    },
    kill: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
      await exited
    },
    exited
  }
}

export async function removeDir (dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true })
}
