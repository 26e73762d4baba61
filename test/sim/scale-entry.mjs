// scale.ts runs its simulation in a worker thread (see there). Worker threads do not inherit the tsx loader
// of the main thread: register it, then load scale.ts, which runs main() when it is not the main thread.
import { register } from 'tsx/esm/api'
register()
await import('./scale.ts')
