{{/*
The verifier as a sidecar of an application's pod: the public templates an application
chart includes (helm/README.md, "Sidecar"; helm/examples/app-with-sidecar uses them).
Each takes the same dict:

  values   the sidecar settings, shaped as this chart's `sidecar` values; with this
           chart as a dependency: `.Values.portcullis.sidecar` (defaults included)
  context  the including chart's root context, `$`
  name     optional: base name of the objects rendered for this sidecar (the policy
           ConfigMap), default `<release>-portcullis-verifier`; give each workload its
           own when several carry sidecars with different policies
  chart    optional: the name (or alias) of this chart among the includer's
           dependencies, default `portcullis`; its appVersion is the default image tag

In a pod template:

  containers:
    - name: app
      ...
    {{- include "portcullis.verifierSidecar" $args | nindent 4 }}
  volumes:
    {{- include "portcullis.verifierSidecarVolumes" $args | nindent 4 }}

and, at the top level of a template file, the policy ConfigMap (nothing when the
policy comes from an existing ConfigMap or there are no rules):

  {{ include "portcullis.verifierSidecarConfigMap" $args }}

With `values.native: true` the container goes under `initContainers` instead (Kubernetes
1.29+): started, and ready, before the application, stopped after it.
*/}}

{{- define "portcullis.verifierSidecar" -}}
{{- $s := required "portcullis.verifierSidecar: pass (dict \"values\" .Values.portcullis.sidecar \"context\" $)" .values -}}
{{- $ctx := required "portcullis.verifierSidecar: pass the including chart's root context as \"context\"" .context -}}
{{- $appVersion := include "portcullis.sidecar.appVersion" . -}}
{{- $issuers := required "portcullis sidecar: config.issuers is required (the control plane's issuer)" $s.config.issuers -}}
{{- $policy := include "portcullis.sidecar.policy" . | fromYaml -}}
{{- include "portcullis.verifier.container" (dict "v" $s "name" $s.name "image" (include "portcullis.image" (dict "image" $s.image "appVersion" $appVersion)) "issuers" $issuers "redis" (include "portcullis.sidecar.redis" . | fromYaml) "policyFile" $policy.file "portPrefix" "verifier-" "native" $s.native) -}}
{{- end -}}

{{/*
The sidecar's volumes (TLS, client CA, policy, Redis CA): list items for the pod's
`volumes`; empty when it needs none. Files are 0444 (292): the application's pod may set
no fsGroup, and the verifier runs as its own user.
*/}}
{{- define "portcullis.verifierSidecarVolumes" -}}
{{- $s := required "portcullis.verifierSidecarVolumes: pass (dict \"values\" ... \"context\" $)" .values -}}
{{- $policy := include "portcullis.sidecar.policy" . | fromYaml -}}
{{- include "portcullis.verifier.volumes" (dict "v" $s "redis" (include "portcullis.sidecar.redis" . | fromYaml) "policyConfigMap" $policy.configMap "policyKey" $s.policy.key "mode" 292) | trim -}}
{{- end -}}

{{/* The sidecar's policy ConfigMap, a whole object, when `policy.rules` are given. */}}
{{- define "portcullis.verifierSidecarConfigMap" -}}
{{- $s := required "portcullis.verifierSidecarConfigMap: pass (dict \"values\" ... \"context\" $)" .values -}}
{{- $ctx := .context -}}
{{- $policy := include "portcullis.sidecar.policy" . | fromYaml -}}
{{- if and $s.policy.rules (not $s.policy.existingConfigMap) }}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ $policy.configMap }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    app.kubernetes.io/name: portcullis-verifier-policy
    app.kubernetes.io/instance: {{ $ctx.Release.Name }}
    app.kubernetes.io/part-of: portcullis
    app.kubernetes.io/managed-by: {{ $ctx.Release.Service }}
data:
  {{- include "portcullis.verifier.policyData" (dict "key" $s.policy.key "rules" $s.policy.rules) | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Internal: {configMap, file} of the sidecar's policy (empty strings: none). */}}
{{- define "portcullis.sidecar.policy" -}}
{{- $s := .values -}}
{{- $base := .name | default (printf "%s-portcullis-verifier" .context.Release.Name) -}}
{{- if and $s.policy.rules $s.policy.existingConfigMap -}}
{{- fail "portcullis sidecar: set policy.rules or policy.existingConfigMap, not both" -}}
{{- end -}}
{{- if and $s.policy.rules (not (regexMatch "\\.ya?ml$" $s.policy.key)) -}}
{{- fail "portcullis sidecar: policy.key must end in .yaml or .yml: rules are rendered as YAML" -}}
{{- end -}}
{{- $cm := "" -}}
{{- if $s.policy.existingConfigMap -}}
{{- $cm = $s.policy.existingConfigMap -}}
{{- else if $s.policy.rules -}}
{{- $cm = printf "%s-policy" ($base | trunc 56 | trimSuffix "-") -}}
{{- end -}}
configMap: {{ $cm | quote }}
file: {{ ternary (printf "/etc/portcullis/policy/%s" $s.policy.key) "" (ne $cm "") | quote }}
{{- end -}}

{{/* Internal: the sidecar's Redis settings, in the shape portcullis.redisEnv takes. */}}
{{- define "portcullis.sidecar.redis" -}}
{{- $r := .values.redis -}}
{{- if and (not .values.jwksUrl) (not $r.sentinels) (not $r.existingSecret) -}}
{{- fail "portcullis sidecar: redis.existingSecret is required (a Secret in this namespace holding the Redis URL), or redis.sentinels, or jwksUrl" -}}
{{- end -}}
{{- if and .values.tls.enabled (not .values.tls.secretName) -}}
{{- fail "portcullis sidecar: tls.secretName is required with tls.enabled" -}}
{{- end -}}
{{- if and .values.tls.clientCa.enabled (not .values.tls.enabled) -}}
{{- fail "portcullis sidecar: tls.clientCa.enabled needs tls.enabled" -}}
{{- end -}}
{{- if $r.sentinels -}}
{{- if and (or $r.passwordKey $r.sentinelPasswordKey) (not $r.existingSecret) -}}
{{- fail "portcullis sidecar: redis.passwordKey and redis.sentinelPasswordKey are keys of redis.existingSecret, which is not set" -}}
{{- end -}}
{{- else -}}
{{- range $value := list "passwordKey" "sentinelPasswordKey" "sentinelTls" -}}
{{- if index $r $value -}}
{{- fail (printf "portcullis sidecar: redis.%s is only for redis.sentinels (a Redis URL carries its own password and scheme)" $value) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml (dict "secretName" $r.existingSecret "secretKey" ($r.existingSecretKey | default "redis-url") "sentinels" ($r.sentinels | default list) "sentinelMaster" $r.sentinelMaster "passwordKey" ($r.passwordKey | default "") "sentinelPasswordKey" ($r.sentinelPasswordKey | default "") "sentinelTls" ($r.sentinelTls | default false) "ca" ($r.ca | default dict)) -}}
{{- end -}}

{{/* Internal: the default image tag, this chart's appVersion as the includer sees it. */}}
{{- define "portcullis.sidecar.appVersion" -}}
{{- $ctx := .context -}}
{{- $chart := .chart | default "portcullis" -}}
{{- if and $ctx.Subcharts (hasKey $ctx.Subcharts $chart) -}}
{{- (index $ctx.Subcharts $chart).Chart.AppVersion -}}
{{- else if eq $ctx.Chart.Name "portcullis" -}}
{{- $ctx.Chart.AppVersion -}}
{{- end -}}
{{- end -}}
