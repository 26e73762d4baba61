// Long fuzz runs: every fast-check property of test/fuzz/properties.ts with N runs from seed S, then (unless
// --no-daemon) a real daemon fuzzed from outside: JSON-RPC requests, NBD connections, a connection flood,
// NBD and instance cycles counted in fds, and a SIGTERM that must stop it cleanly.
//   npm run fuzz -- [--runs N] [--seed S] [--only SUBSTRING] [--no-daemon]
// A failure prints the seed (and fast-check's path) that reproduces it; exit code 1.

import '../src/polyfill.js'
import { parseArgs } from 'node:util'
import { join } from 'node:path'
import { readFile, writeFile } from 'node:fs/promises'
import { targets } from '../test/fuzz/properties.js'
import { rpcFuzz, nbdFuzz, nbdCycles, instanceCycles, connectionFlood } from '../test/fuzz/daemon-fuzz.js'
import { startDaemon, makeTempDir, removeDir } from './lib/agent-process.js'
import { makeImage } from '../test/helpers/images.js'

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '1000' },
    seed: { type: 'string' },
    only: { type: 'string' },
    'no-daemon': { type: 'boolean' }
  }
})
const runs = Number(values.runs)
const seed = values.seed !== undefined ? Number(values.seed) : (Date.now() >>> 0)
if (!Number.isInteger(runs) || runs < 1 || !Number.isInteger(seed)) {
  process.stderr.write('usage: npm run fuzz -- [--runs N] [--seed S] [--only SUBSTRING] [--no-daemon]\n')
  process.exit(2)
}
const say = (line: string): void => { process.stdout.write(line + '\n') }
say(`fuzz: ${runs} runs per property, seed ${seed}`)
let failures = 0
for (const target of targets) {
  if (values.only !== undefined && !target.name.includes(values.only)) continue
  // The NBD property opens two connections per case: a quarter of the runs keeps it in proportion.
  const numRuns = target.name.startsWith('NBD') ? Math.max(1, Math.ceil(runs / 4)) : runs
  const cpu = process.cpuUsage()
  try {
    await target.run({ numRuns, seed })
    const used = process.cpuUsage(cpu)
    say(`ok    ${target.name.padEnd(36)} ${String(numRuns).padStart(7)} runs  ${((used.user + used.system) / 1e6).toFixed(2)} CPU-s`)
  } catch (err) {
    failures++
    say(`FAIL  ${target.name}\n${(err as Error).message}\nreproduce: npm run fuzz -- --only '${target.name}' --runs ${numRuns} --seed ${seed} --no-daemon`)
  }
}

if (values['no-daemon'] !== true && values.only === undefined) {
  const dir = await makeTempDir('vmtfuzz')
  const imagePath = join(dir, 'img.raw')
  await makeImage(imagePath, 8 * 1024 * 1024 + 4321, [[0, 2 * 1024 * 1024], [5 * 1024 * 1024, 3 * 1024 * 1024 + 4321]])
  const config = join(dir, 'config.json')
  await writeFile(config, JSON.stringify({ rpc: { maxConnections: 16 }, p2p: { manifestTimeoutMs: 5000 }, prefetch: { enabled: false } }))
  const daemon = await startDaemon({ dir, args: ['--listen', '/ip4/127.0.0.1/tcp/0', '--config', config], allowImageDirs: [dir] })
  const check = (what: string, ok: boolean, detail: unknown): void => {
    if (!ok) failures++
    say(`${ok ? 'ok   ' : 'FAIL '} ${what.padEnd(36)} ${JSON.stringify(detail)}`)
  }
  try {
    await daemon.call('image.register', { id: 'img', path: imagePath })
    const rpc = await rpcFuzz(daemon, { requests: runs * 10, seed, connections: 8, imagePath })
    check('daemon: JSON-RPC fuzz', rpc.daemonAlive && rpc.unanswered === 0 && rpc.internalErrors === 0, rpc)
    const nbd = await nbdFuzz(daemon, { cases: runs, seed, imageId: 'img', expected: await readFile(imagePath) })
    check('daemon: NBD fuzz', nbd.daemonAlive && nbd.wrongBytes === 0, nbd)
    const flood = await connectionFlood(daemon, { connections: 40 })
    check('daemon: connection flood', flood.answered + flood.refused === flood.connections && flood.fdsAfter <= flood.fdsBefore, flood)
    const nbdC = await nbdCycles(daemon, { cycles: runs, imageId: 'img' })
    check('daemon: NBD cycles', nbdC.fdsAfter <= nbdC.fdsBefore, nbdC)
    const instC = await instanceCycles(daemon, { cycles: Math.max(10, Math.ceil(runs / 5)), imageId: 'img' })
    check('daemon: instance cycles', instC.fdsAfter <= instC.fdsBefore, instC)
    const code = await daemon.stop()
    check('daemon: SIGTERM after the fuzz', code === 0 && daemon.log().includes('"message":"vmthunderd stopped"'), { exitCode: code })
  } catch (err) {
    failures++
    say(`FAIL  daemon fuzz: ${(err as Error).stack ?? String(err)}\nreproduce: npm run fuzz -- --runs ${runs} --seed ${seed}`)
  } finally {
    await daemon.kill()
    if (failures === 0) await removeDir(dir)
    else say(`daemon dir kept: ${dir}`)
  }
}
say(failures === 0 ? `fuzz: all passed (seed ${seed})` : `fuzz: ${failures} failure(s); seed ${seed}`)
process.exitCode = failures === 0 ? 0 : 1
