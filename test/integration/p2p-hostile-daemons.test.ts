// Hostile peers with real vmthunderd processes on loopback and an NBD client: an agent whose daemon serves
// its peers through a flip-bits fault layer (preloaded test-only, test/helpers/daemon-faults.ts) is a
// victim's parent; nbdcopy reading through the victim's NBD export gets the origin's exact bytes, the victim
// bans the liar and gets every block from the origin instead. Also: a daemon with a fault layer loaded
// refuses to start without the env gate.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { writeFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { execa } from 'execa'
import { startDaemon, makeTempDir, removeDir, type TestDaemon } from '../helpers/daemon.js'
import { makeImage, sha256File } from '../helpers/images.js'
import { waitFor } from '../helpers/wait.js'
import { TEST_FAULTS_ENV } from '../../src/daemon/test-faults.js'

const MiB = 1024 * 1024
const IMAGE_BYTES = 8 * MiB
const HOOK = fileURLToPath(new URL('../helpers/daemon-faults.ts', import.meta.url))
/** What the hook module reads (kept here: importing the hook would register a layer in this process). */
const FAULT_SPEC_ENV = 'VMTHUNDERD_TEST_FAULT_SPEC'

/** Environment of a daemon that serves its peers through a fault layer; `gate` false leaves the env gate off. */
function faultEnv (spec: object, gate = true): Record<string, string> {
  return {
    NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --import tsx --import ${HOOK}`.trim(),
    [FAULT_SPEC_ENV]: JSON.stringify(spec),
    ...(gate ? { [TEST_FAULTS_ENV]: '1' } : {})
  }
}

test('a daemon with a fault layer loaded refuses to start unless VMTHUNDERD_TEST_FAULTS=1', { timeout: 120_000 }, async () => {
  const dir = await makeTempDir('vmt-faultgate')
  try {
    await assert.rejects(startDaemon({ dir, args: ['--listen', '/ip4/127.0.0.1/tcp/0'], env: faultEnv({ fault: 'flip' }, false), timeoutMs: 90_000 }),
      /TestFaultsRefusedError|refusing to serve peers through it unless VMTHUNDERD_TEST_FAULTS=1/)
  } finally {
    await removeDir(dir)
  }
})

test('real daemons: a parent that flips bits is banned; nbdcopy through the victim gets the exact image', { timeout: 300_000 }, async () => {
  const dir = await makeTempDir('vmt-hostile')
  const daemons: TestDaemon[] = []
  try {
    const image = join(dir, 'image.raw')
    await makeImage(image, IMAGE_BYTES, [[0, IMAGE_BYTES]])
    const imageSha = await sha256File(image)
    const config = join(dir, 'agent.json')
    await writeFile(config, JSON.stringify({ prefetch: { enabled: false }, p2p: { heartbeatMs: 500 } }))
    const origin = await startDaemon({ dir: join(dir, 'origin'), args: ['--listen', '/ip4/127.0.0.1/tcp/0', '--config', config], allowImageDirs: [dir], timeoutMs: 120_000 })
    daemons.push(origin)
    await origin.call('image.register', { id: 'img', path: image })
    const originStatus = await origin.call('node.status')
    const peerArgs = ['--listen', '/ip4/127.0.0.1/tcp/0', '--bootstrap', originStatus.listenAddrs[0], '--trust', originStatus.peerId, '--config', config]
    // The filler admits no children (p2p.childLimit 0) and only takes the origin's one child slot, so that the
    // liar is the only parent the victim can have: it is certainly asked, and the victim's cache certainly
    // checks what it sends (with a second parent a hedge there could win every race, and then the liar's
    // blocks would be dropped as duplicates unverified: no ban, which failed this test once under load). It
    // takes the slot first: once the liar is a seed with room, no agent takes the origin as a new parent
    // (src/topology/driver.ts), the filler included; a parent it has is kept.
    const fillerConfig = join(dir, 'filler.json')
    await writeFile(fillerConfig, JSON.stringify({ prefetch: { enabled: false }, p2p: { heartbeatMs: 500, childLimit: 0 } }))
    const [hostile, filler, victim] = await Promise.all([
      startDaemon({ dir: join(dir, 'hostile'), args: peerArgs, env: faultEnv({ fault: 'flip' }), timeoutMs: 120_000 }),
      startDaemon({ dir: join(dir, 'filler'), args: peerArgs.map(arg => arg === config ? fillerConfig : arg), timeoutMs: 120_000 }),
      startDaemon({ dir: join(dir, 'victim'), args: peerArgs, timeoutMs: 120_000 })
    ])
    daemons.push(hostile, filler, victim)
    assert.match(hostile.log(), /serving peers through a test fault layer/)
    const fillerId = (await filler.call('node.status')).peerId as string
    await filler.call('instance.create', { name: 'f', image: 'img' })
    await waitFor('the filler to take the origin\'s child slot', async () =>
      ((await origin.call('node.status')).images.img?.children ?? []).includes(fillerId) ? true : undefined, { timeoutMs: 30_000 })
    // The liar reads the image honestly (the layer is only on what it serves; with no slot free anywhere it
    // reads from the origin as a last resort) and is a seed then.
    await hostile.call('instance.create', { name: 'h', image: 'img' })
    await execa('nbdcopy', ['--requests=4', hostile.nbdUri('img'), join(hostile.dir, 'h.raw')], { timeout: 240_000 })
    assert.equal(await sha256File(join(hostile.dir, 'h.raw')), imageSha)
    const hostileId = (await hostile.call('node.status')).peerId as string
    assert.ok(((await origin.call('node.status')).images.img?.children ?? []).includes(fillerId), 'the filler kept the origin\'s slot')
    await victim.call('instance.create', { name: 'v', image: 'img' })
    await waitFor('the victim to take the liar as parent', async () =>
      ((await victim.call('node.status')).images.img?.parents ?? []).includes(hostileId) ? true : undefined, { timeoutMs: 30_000 })
    const out = join(victim.dir, 'v.raw')
    await execa('nbdcopy', ['--requests=4', victim.nbdUri('img'), out], { timeout: 240_000 })
    assert.equal(await sha256File(out), imageSha, 'not one corrupt byte reached the NBD client')
    const status = await victim.call('node.status')
    assert.ok(status.p2p.banned.includes(hostileId), 'the victim banned the liar')
    assert.ok(!status.images.img.parents.includes(hostileId))
    const byPeer = status.images.img.bytesReceivedByPeer as Record<string, number>
    assert.ok((byPeer[hostileId] ?? 0) > 0, 'the liar was asked (and every block it sent was flipped)')
    const fromOthers = Object.entries(byPeer).filter(([peer]) => peer !== hostileId).reduce((sum, [, n]) => sum + n, 0)
    assert.ok(fromOthers >= IMAGE_BYTES, `every block came intact from the others (${fromOthers} bytes)`)
  } finally {
    await Promise.all(daemons.map(async d => await d.stop()))
    await removeDir(dir)
  }
})
