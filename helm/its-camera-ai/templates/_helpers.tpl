{{/*
Names and labels. The full name is kept to 40 characters so that "<fullname>-otel-collector"
and the like stay within Kubernetes' 63.
*/}}
{{- define "its.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "its.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "analytics"). */}}
{{- define "its.selectorLabels" -}}
app.kubernetes.io/name: {{ include "its.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Every label of one component: (dict "root" $ "component" "analytics"). */}}
{{- define "its.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: its-camera-ai
{{ include "its.selectorLabels" . }}
{{- end -}}

{{/* Labels every pod of the release carries (the default-deny policy selects them). */}}
{{- define "its.releaseSelector" -}}
app.kubernetes.io/name: {{ include "its.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "its.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
The size of the camera node's /dev/shm, in bytes. One ring per camera (docs/architecture.md,
"The shared-memory ring"; its_camera_ai.shm.layout.total_size_for):

  frame   = width * height * bytes per pixel   (rgb24/bgr24 3, rgba 4, gray8 1,
                                                yuv420p/nv12 3/2)
  slot    = 4096 (metadata page) + frame rounded up to 4096
  ring    = 4096 (header page) + ring_slots * slot
  size    = (cameras + spareRings) * ring + cameras * 16 * 4096

The last term is the readers' POSIX semaphores (also in /dev/shm): up to 16 readers per
ring (the ring's max_readers), a page each. spareRings leave room for a ring being built
under a temporary name beside the one it replaces.
*/}}
{{- define "its.shm.sizeBytes" -}}
{{- $bytesPerPixel := dict "rgb24" (list 3 1) "bgr24" (list 3 1) "rgba" (list 4 1) "gray8" (list 1 1) "yuv420p" (list 3 2) "nv12" (list 3 2) -}}
{{- $format := required "config.decoder.ring_pixel_format is required" .Values.config.decoder.ring_pixel_format -}}
{{- $ratio := required (printf "config.decoder.ring_pixel_format: unknown format %q" $format) (get $bytesPerPixel $format) -}}
{{- $node := .Values.cameraNode -}}
{{- if and (eq (index $ratio 1) 2) (or (mod (int64 $node.maxFrame.width) 2) (mod (int64 $node.maxFrame.height) 2)) -}}
{{- fail (printf "cameraNode.maxFrame: %s frames need an even width and height" $format) -}}
{{- end -}}
{{- $frame := div (mul (int64 $node.maxFrame.width) (int64 $node.maxFrame.height) (index $ratio 0)) (index $ratio 1) -}}
{{- $slot := add 4096 (mul (div (add $frame 4095) 4096) 4096) -}}
{{- $ring := add 4096 (mul (int64 .Values.config.decoder.ring_slots) $slot) -}}
{{- $rings := add (int64 $node.cameras) (int64 $node.spareRings) -}}
{{- add (mul $rings $ring) (mul (int64 $node.cameras) 16 4096) -}}
{{- end -}}

{{/* The /dev/shm size in MiB, rounded up. */}}
{{- define "its.shm.sizeMiB" -}}
{{- $bytes := include "its.shm.sizeBytes" . | int64 -}}
{{- div (add $bytes 1048575) 1048576 -}}
{{- end -}}

{{/* Peer targets: every service listens on 50051 behind its Service. */}}
{{- define "its.target" -}}
{{- printf "%s-%s:50051" (include "its.fullname" .root) .service -}}
{{- end -}}

{{/*
The app config (the config/*.yaml schema): `config` from the values, then what the chart owns
on top: ports, peer targets, secret and certificate paths, writable directories.
*/}}
{{- define "its.appConfig" -}}
{{- $v := .Values -}}
{{- $config := deepCopy $v.config -}}
{{- $security := dict "metrics_token_file" "/etc/its/metrics/token" -}}
{{- if $v.tls.enabled -}}
{{- $serverTls := dict "cert_file" "/etc/its/tls/tls.crt" "key_file" "/etc/its/tls/tls.key" "client_ca_file" "/etc/its/tls/ca.crt" "require_client_cert" true "client_roles" $v.tls.clientRoles -}}
{{- if $v.envoy.enabled -}}
{{- $_ := set $serverTls "edge_proxies" (list $v.envoy.identity) -}}
{{- end -}}
{{- $_ := set $security "tls" $serverTls -}}
{{- $_ := set $security "peer_tls" (dict "enabled" true "ca_file" "/etc/its/tls/ca.crt" "cert_file" "/etc/its/tls/client.crt" "key_file" "/etc/its/tls/client.key") -}}
{{- end -}}
{{- $decoderTarget := include "its.target" (dict "root" . "service" "decoder") -}}
{{- $owned := dict
  "environment" $v.environment
  "grpc" (dict "port" 50051)
  "http" (dict "port" 8000)
  "database" (dict "dsn_file" "/etc/its/secrets/database-dsn")
  "decoder" (dict "max_cameras" (int64 $v.cameraNode.cameras) "source_keys_file" "/etc/its/secrets/decoder-source-keys")
  "analytics" (dict "spool_dir" "/var/lib/its/analytics/spool" "decoder_target" $decoderTarget)
  "query" (dict "decoder_target" $decoderTarget)
  "inference" (dict "decoder_target" $decoderTarget "analytics_target" (include "its.target" (dict "root" . "service" "analytics")) "engine_cache_dir" "/var/lib/its/inference/engines")
  "security" $security
-}}
{{- if $v.redis.enabled -}}
{{- $_ := set $owned "redis" (dict "url_file" "/etc/its/secrets/redis-url") -}}
{{- end -}}
{{- toYaml (mustMergeOverwrite $config $owned) -}}
{{- end -}}

{{/* The OTLP endpoint services export to; empty: none. */}}
{{- define "its.otlpEndpoint" -}}
{{- if .Values.tracing.collector.enabled -}}
{{- printf "http://%s-otel-collector:4317" (include "its.fullname" .) -}}
{{- else -}}
{{- .Values.tracing.otlpEndpoint -}}
{{- end -}}
{{- end -}}

{{/* Pod security context of every pod of the chart: (dict "user" 10001 "group" 10001). */}}
{{- define "its.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .user }}
runAsGroup: {{ .group }}
fsGroup: {{ .group }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container security context of every container of the chart. */}}
{{- define "its.containerSecurityContext" -}}
runAsNonRoot: true
privileged: false
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
Probes of a service container: (dict "root" $ "service" "its.query.v1.QueryService"
"grpcPort" 50051 "httpPort" 8000). Readiness is the container's own gRPC health status;
kubelet's gRPC probe cannot do TLS, so with TLS it is the HTTP side port's /health, which
answers 503 while a dependency is down just as the gRPC status turns NOT_SERVING. Start-up
and liveness are /live: up once the process has started, and independent of the database
(a PostgreSQL outage must not restart every service).
*/}}
{{- define "its.probes" -}}
{{- $probes := .root.Values.probes -}}
startupProbe:
  httpGet: {path: /live, port: {{ .httpPort }}}
  {{- toYaml $probes.startup | nindent 2 }}
readinessProbe:
  {{- if .root.Values.tls.enabled }}
  httpGet: {path: /health, port: {{ .httpPort }}}
  {{- else }}
  grpc: {port: {{ .grpcPort }}, service: {{ .service }}}
  {{- end }}
  {{- toYaml $probes.readiness | nindent 2 }}
livenessProbe:
  httpGet: {path: /live, port: {{ .httpPort }}}
  {{- toYaml $probes.liveness | nindent 2 }}
{{- end -}}

{{/*
Environment of a service container: (dict "root" $ "extra" (list ...)). The TLS 1.2 cipher
list is set here (not by the CLI's re-exec) so that the process grpc imports under is the
one Kubernetes started; see its_camera_ai.security's TLS module.
*/}}
{{- define "its.serviceEnv" -}}
{{- $env := list -}}
{{- if .root.Values.tls.enabled -}}
{{- $env = append $env (dict "name" "GRPC_SSL_CIPHER_SUITES" "value" "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384") -}}
{{- end -}}
{{- with include "its.otlpEndpoint" .root -}}
{{- $env = append $env (dict "name" "ITS_TRACING__OTLP_ENDPOINT" "value" .) -}}
{{- end -}}
{{- $env = concat $env (default (list) .extra) -}}
{{- if $env -}}
env:
  {{- toYaml $env | nindent 2 }}
{{- end -}}
{{- end -}}

{{/*
Pod volumes every service pod has: the app config, the secrets as files, the metrics token.
*/}}
{{- define "its.serviceVolumes" -}}
- name: config
  configMap:
    name: {{ include "its.fullname" . }}-config
- name: secrets
  secret:
    secretName: {{ .Values.secrets.name }}
    defaultMode: 0440
    items:
      - {key: database-dsn, path: database-dsn}
      {{- if .Values.redis.enabled }}
      - {key: redis-url, path: redis-url}
      {{- end }}
      - {key: decoder-source-keys, path: decoder-source-keys}
- name: metrics-token
  secret:
    secretName: {{ .Values.secrets.name }}
    defaultMode: 0440
    items:
      - {key: metrics-token, path: token}
{{- end -}}

{{/*
TLS volume of one service: (dict "root" $ "service" "query"): the server certificate and
CA with the service's own client certificate, as config/production.yaml names the files.
*/}}
{{- define "its.tlsVolume" -}}
{{- if .root.Values.tls.enabled -}}
- name: tls-{{ .service }}
  projected:
    defaultMode: 0440
    sources:
      - secret:
          name: {{ .root.Values.tls.serverSecret }}
          items:
            - {key: tls.crt, path: tls.crt}
            - {key: tls.key, path: tls.key}
            - {key: ca.crt, path: ca.crt}
      - secret:
          name: {{ get .root.Values.tls.clientSecrets .service }}
          items:
            - {key: tls.crt, path: client.crt}
            - {key: tls.key, path: client.key}
{{- end -}}
{{- end -}}

{{/* Mounts of a service container: (dict "root" $ "service" "query" "scratch" "tmp-query"). */}}
{{- define "its.serviceMounts" -}}
- {name: config, mountPath: /etc/its/deploy, readOnly: true}
- {name: secrets, mountPath: /etc/its/secrets, readOnly: true}
- {name: metrics-token, mountPath: /etc/its/metrics, readOnly: true}
- {name: {{ .scratch }}, mountPath: /tmp}
{{- if .root.Values.tls.enabled }}
- {name: tls-{{ .service }}, mountPath: /etc/its/tls, readOnly: true}
{{- end }}
{{- end -}}

{{/* Arguments of a service container: (dict "service" "query"). */}}
{{- define "its.serveArgs" -}}
args: [serve, {{ .service }}, --config, /etc/its/deploy/config.yaml]
{{- end -}}

{{/* Pod settings shared by the chart's pods: pull secrets, graceful stop, security. */}}
{{- define "its.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
automountServiceAccountToken: false
enableServiceLinks: false
terminationGracePeriodSeconds: {{ add (int64 .Values.config.grpc.drain_seconds) 15 }}
securityContext:
  {{- include "its.podSecurityContext" (dict "user" .Values.runAsUser "group" .Values.runAsGroup) | nindent 2 }}
{{- end -}}

{{/* Scheduling of a pod: (dict "nodeSelector" {} "tolerations" [] "affinity" {}). */}}
{{- define "its.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The config's checksum, so that pods restart when it changes. */}}
{{- define "its.configChecksum" -}}
checksum/config: {{ include "its.appConfig" . | sha256sum }}
{{- end -}}
