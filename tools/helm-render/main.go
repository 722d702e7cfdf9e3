// helm-render renders a Helm chart the way `helm template` does, for tests on machines
// that have no helm binary. It is Helm's engine in small: Go's text/template with the
// sprig functions, Helm's own functions (include, tpl, required, toYaml, ...), values
// merged over the chart's values.yaml, validated against values.schema.json, and the
// output in Helm's order and format. A test tool, never shipped.
//
// Build offline with Debian's packages (scripts/install-deps.sh installs them):
//
//	cd tools/helm-render && GO111MODULE=off GOPATH=/usr/share/gocode go build -o helm-render .
//
// Usage, like `helm template NAME CHART`:
//
//	helm-render [--name paddock] [--namespace ns] [-f values.yaml]... [--set a.b=c]...
//	            [--kube-version v1.30.0] [--api-versions group/version]... [--include-crds]
//	            [--notes] CHART
//
// Deliberate differences from helm: no subcharts, .Files has only Get (of files outside
// templates/, no .helmignore), no hooks, and a document
// that holds only comments is left out. On any error (schema, `required`, `fail`, a
// template that does not parse, output that is not YAML) it prints the error on stderr
// and exits 1.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/template"

	// Without the /v3 of their module paths: GOPATH mode finds them by directory.
	"github.com/Masterminds/semver"
	"github.com/Masterminds/sprig"
	"github.com/xeipuuv/gojsonschema"
	"gopkg.in/yaml.v3"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

// KubeVersion is .Capabilities.KubeVersion; it prints as its Version, as in helm.
type KubeVersion struct{ Version, Major, Minor, GitVersion string }

func (k KubeVersion) String() string { return k.Version }

// VersionSet is .Capabilities.APIVersions.
type VersionSet []string

// Has says whether "group/version" or "group/version/Kind" is served.
func (v VersionSet) Has(apiVersion string) bool {
	for _, known := range v {
		if known == apiVersion {
			return true
		}
	}
	return false
}

// The API versions a plain cluster serves, as helm's defaults (plus --api-versions).
var defaultAPIVersions = []string{
	"v1", "apps/v1", "batch/v1", "policy/v1", "autoscaling/v2", "networking.k8s.io/v1",
	"rbac.authorization.k8s.io/v1", "coordination.k8s.io/v1", "events.k8s.io/v1",
	"admissionregistration.k8s.io/v1", "apiextensions.k8s.io/v1", "storage.k8s.io/v1",
	"scheduling.k8s.io/v1", "discovery.k8s.io/v1", "certificates.k8s.io/v1",
}

// Helm's install order (releaseutil.InstallOrder): the order `helm template` prints kinds in.
var installOrder = []string{
	"PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange",
	"PodSecurityPolicy", "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList",
	"ConfigMap", "StorageClass", "PersistentVolume", "PersistentVolumeClaim",
	"CustomResourceDefinition", "ClusterRole", "ClusterRoleList", "ClusterRoleBinding",
	"ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList", "Service",
	"DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
	"HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress",
	"APIService", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	var valueFiles, sets, apiVersions listFlag
	flags := flag.NewFlagSet("helm-render", flag.ContinueOnError)
	name := flags.String("name", "release-name", "release name")
	namespace := flags.String("namespace", "default", "release namespace")
	kubeVersion := flags.String("kube-version", "v1.30.0", "Kubernetes version for .Capabilities")
	includeCRDs := flags.Bool("include-crds", false, "print the chart's crds/ too")
	notes := flags.Bool("notes", false, "print the rendered NOTES.txt too")
	flags.Var(&valueFiles, "f", "values file (repeatable; later ones win)")
	flags.Var(&sets, "set", "key.path=value (repeatable)")
	flags.Var(&apiVersions, "api-versions", "extra API version for .Capabilities.APIVersions (repeatable)")
	// Flags may come before or after the chart, as with helm.
	var positional []string
	for {
		if err := flags.Parse(args); err != nil {
			return err
		}
		if flags.NArg() == 0 {
			break
		}
		positional = append(positional, flags.Arg(0))
		args = flags.Args()[1:]
	}
	if len(positional) != 1 {
		return errors.New("usage: helm-render [flags] CHART_DIR")
	}
	chartDir := positional[0]
	// helm's own rule: a DNS name short enough for what charts append to it.
	if len(*name) > 53 || !regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`).MatchString(*name) {
		return fmt.Errorf("release name %q: at most 53 characters of a-z, 0-9 and '-', starting and ending with a letter or digit", *name)
	}

	chart, err := readYAMLMap(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		return err
	}
	chartMeta := chartMetadata(chart)
	values, err := readYAMLMap(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		return err
	}
	for _, file := range valueFiles {
		override, err := readYAMLMap(file)
		if err != nil {
			return err
		}
		values = mergeValues(values, override)
	}
	for _, set := range sets {
		if err := applySet(values, set); err != nil {
			return err
		}
	}
	if err := validateSchema(chartDir, values); err != nil {
		return err
	}

	kv, err := parseKubeVersion(*kubeVersion)
	if err != nil {
		return err
	}
	if constraint, ok := chart["kubeVersion"].(string); ok && constraint != "" {
		c, err := semver.NewConstraint(constraint)
		if err != nil {
			return fmt.Errorf("Chart.yaml kubeVersion %q: %w", constraint, err)
		}
		if !c.Check(semver.MustParse(kv.Version)) {
			return fmt.Errorf("chart requires kubeVersion: %s which is incompatible with Kubernetes %s", constraint, kv.Version)
		}
	}
	files, err := readFiles(chartDir)
	if err != nil {
		return err
	}
	top := map[string]interface{}{
		"Files":  files,
		"Values": values,
		"Chart":  chartMeta,
		"Release": map[string]interface{}{
			"Name": *name, "Namespace": *namespace, "Service": "Helm",
			"IsInstall": true, "IsUpgrade": false, "Revision": 1,
		},
		"Capabilities": map[string]interface{}{
			"KubeVersion": kv,
			"APIVersions": append(VersionSet(defaultAPIVersions), apiVersions...),
		},
	}

	rendered, err := renderTemplates(chartDir, chartMeta["Name"].(string), top)
	if err != nil {
		return err
	}
	out, err := assemble(chartDir, chartMeta["Name"].(string), rendered, *includeCRDs, *notes)
	if err != nil {
		return err
	}
	_, err = os.Stdout.WriteString(out)
	return err
}

// Files is .Files: the chart's files outside templates/, by path relative to the chart.
type Files map[string][]byte

// Get is .Files.Get: a file's contents, or "" when there is no such file (as in helm).
func (f Files) Get(name string) string { return string(f[name]) }

func readFiles(chartDir string) (Files, error) {
	files := Files{}
	err := filepath.WalkDir(chartDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(chartDir, path)
		if d.IsDir() {
			if rel == "templates" {
				return filepath.SkipDir
			}
			return nil
		}
		data, err := os.ReadFile(path)
		files[filepath.ToSlash(rel)] = data
		return err
	})
	return files, err
}

// readYAMLMap reads a YAML mapping with numbers as float64, as helm reads values (it goes
// through JSON), so templates see what they would see under helm.
func readYAMLMap(path string) (map[string]interface{}, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out map[string]interface{}
	if err := yaml.Unmarshal(data, &out); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if out == nil {
		out = map[string]interface{}{}
	}
	return jsonNumbers(out).(map[string]interface{}), nil
}

func jsonNumbers(v interface{}) interface{} {
	switch t := v.(type) {
	case map[string]interface{}:
		for k, e := range t {
			t[k] = jsonNumbers(e)
		}
	case []interface{}:
		for i, e := range t {
			t[i] = jsonNumbers(e)
		}
	case int:
		return float64(t)
	}
	return v
}

// chartMetadata maps Chart.yaml onto helm's .Chart field names.
func chartMetadata(chart map[string]interface{}) map[string]interface{} {
	special := map[string]string{"apiVersion": "APIVersion", "appVersion": "AppVersion", "kubeVersion": "KubeVersion"}
	meta := map[string]interface{}{}
	for k, v := range chart {
		if s, ok := special[k]; ok {
			meta[s] = v
		} else {
			meta[strings.ToUpper(k[:1])+k[1:]] = v
		}
	}
	return meta
}

// mergeValues merges override into base as helm does: maps merge key by key, anything
// else replaces, and a null deletes the key.
func mergeValues(base, override map[string]interface{}) map[string]interface{} {
	for k, v := range override {
		if v == nil {
			delete(base, k)
			continue
		}
		if vm, ok := v.(map[string]interface{}); ok {
			if bm, ok := base[k].(map[string]interface{}); ok {
				base[k] = mergeValues(bm, vm)
				continue
			}
		}
		base[k] = v
	}
	return base
}

// applySet applies `a.b=c[,d.e=f]` with helm's typing of scalars (bool, int64, null, string).
func applySet(values map[string]interface{}, set string) error {
	for _, pair := range regexp.MustCompile(`(?:\\.|[^,])+`).FindAllString(set, -1) {
		key, raw, ok := strings.Cut(pair, "=")
		if !ok || key == "" {
			return fmt.Errorf("--set %q: expected key=value", pair)
		}
		raw = strings.ReplaceAll(raw, `\,`, ",")
		var value interface{} = raw
		switch {
		case raw == "true" || raw == "false":
			value = raw == "true"
		case raw == "null":
			value = nil
		case raw == "0" || (raw != "" && raw[0] != '0'):
			if n, err := strconv.ParseInt(raw, 10, 64); err == nil {
				value = n
			}
		}
		path := strings.Split(key, ".")
		node := values
		for _, part := range path[:len(path)-1] {
			child, ok := node[part].(map[string]interface{})
			if !ok {
				child = map[string]interface{}{}
				node[part] = child
			}
			node = child
		}
		if value == nil {
			delete(node, path[len(path)-1])
		} else {
			node[path[len(path)-1]] = value
		}
	}
	return nil
}

func validateSchema(chartDir string, values map[string]interface{}) error {
	schema, err := os.ReadFile(filepath.Join(chartDir, "values.schema.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	result, err := gojsonschema.Validate(gojsonschema.NewBytesLoader(schema), gojsonschema.NewGoLoader(values))
	if err != nil {
		return fmt.Errorf("values.schema.json: %w", err)
	}
	if result.Valid() {
		return nil
	}
	var msg strings.Builder
	msg.WriteString("values don't meet the specifications of the schema(s) in the following chart(s):\n")
	msg.WriteString(filepath.Base(filepath.Clean(chartDir)) + ":\n")
	for _, e := range result.Errors() {
		fmt.Fprintf(&msg, "- %s\n", e)
	}
	return errors.New(strings.TrimSuffix(msg.String(), "\n"))
}

func parseKubeVersion(s string) (KubeVersion, error) {
	v, err := semver.NewVersion(s)
	if err != nil {
		return KubeVersion{}, fmt.Errorf("--kube-version %q: %w", s, err)
	}
	full := "v" + v.String()
	return KubeVersion{Version: full, Major: strconv.FormatUint(v.Major(), 10),
		Minor: strconv.FormatUint(v.Minor(), 10), GitVersion: full}, nil
}

// renderTemplates parses every file under templates/ into one set (so named templates
// are shared) and executes each whose name does not start with "_", as helm does.
// It returns rendered text by template name ("<chart>/templates/<file>").
func renderTemplates(chartDir, chartName string, top map[string]interface{}) (map[string]string, error) {
	root := template.New("gotpl").Option("missingkey=zero")
	root.Funcs(funcMap(root, chartName))
	var names []string
	err := filepath.WalkDir(filepath.Join(chartDir, "templates"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(chartDir, path)
		name := chartName + "/" + filepath.ToSlash(rel)
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		names = append(names, name)
		_, err = root.New(name).Parse(string(data))
		return err
	})
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	out := map[string]string{}
	for _, name := range names {
		if strings.HasPrefix(filepath.Base(name), "_") {
			continue
		}
		vals := map[string]interface{}{}
		for k, v := range top {
			vals[k] = v
		}
		vals["Template"] = map[string]interface{}{"Name": name, "BasePath": chartName + "/templates"}
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, name, vals); err != nil {
			return nil, cleanError(err)
		}
		out[name] = strings.ReplaceAll(buf.String(), "<no value>", "")
	}
	return out, nil
}

// cleanError turns text/template's "error calling required: msg" into helm's wording.
func cleanError(err error) error {
	re := regexp.MustCompile(`(?s)^template: (\S+?):(\d+):(\d+): executing .* error calling \w+: (.*)$`)
	if m := re.FindStringSubmatch(err.Error()); m != nil {
		return fmt.Errorf("execution error at (%s:%s:%s): %s", m[1], m[2], m[3], m[4])
	}
	return err
}

func funcMap(root *template.Template, chartName string) template.FuncMap {
	f := sprig.TxtFuncMap()
	delete(f, "env")
	delete(f, "expandenv")
	depth := 0
	f["include"] = func(name string, data interface{}) (string, error) {
		if depth++; depth > 1000 {
			return "", fmt.Errorf("include of %q: nested too deeply", name)
		}
		defer func() { depth-- }()
		var buf bytes.Buffer
		err := root.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	f["tpl"] = func(text string, data interface{}) (string, error) {
		clone, err := root.Clone()
		if err != nil {
			return "", err
		}
		t, err := clone.New(chartName + "/tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		if err := t.Execute(&buf, data); err != nil {
			return "", err
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
	f["required"] = func(msg string, v interface{}) (interface{}, error) {
		if s, ok := v.(string); v == nil || (ok && s == "") {
			return v, errors.New(msg)
		}
		return v, nil
	}
	f["toYaml"] = func(v interface{}) string {
		var buf bytes.Buffer
		enc := yaml.NewEncoder(&buf)
		enc.SetIndent(2)
		if err := enc.Encode(v); err != nil {
			return ""
		}
		return strings.TrimSuffix(buf.String(), "\n")
	}
	f["fromYaml"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := yaml.Unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	f["toJson"] = func(v interface{}) string {
		data, _ := json.Marshal(v)
		return string(data)
	}
	f["fromJson"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	// helm template talks to no cluster: lookup finds nothing.
	f["lookup"] = func(apiVersion, kind, namespace, name string) (map[string]interface{}, error) {
		return map[string]interface{}{}, nil
	}
	return f
}

type manifest struct {
	source, content string
	order           int
	kind            string
}

// assemble splits the rendered files into documents, drops empty ones, checks each is
// YAML, sorts them in helm's install order and prints them as helm does.
func assemble(chartDir, chartName string, rendered map[string]string, includeCRDs, notes bool) (string, error) {
	order := map[string]int{}
	for i, kind := range installOrder {
		order[kind] = i
	}
	var sources []string
	for name := range rendered {
		sources = append(sources, name)
	}
	sort.Strings(sources)
	separator := regexp.MustCompile(`(?m)^---[ \t]*$`)
	var manifests []manifest
	for _, source := range sources {
		if strings.HasSuffix(source, "NOTES.txt") {
			continue
		}
		for _, doc := range separator.Split(rendered[source], -1) {
			if onlyComments(doc) {
				continue
			}
			var head struct{ Kind string }
			if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
				return "", fmt.Errorf("%s: rendered output is not YAML: %w\n%s", source, err, doc)
			}
			rank, known := order[head.Kind]
			if !known {
				rank = len(installOrder)
			}
			manifests = append(manifests, manifest{source, strings.Trim(doc, "\n"), rank, head.Kind})
		}
	}
	sort.SliceStable(manifests, func(i, j int) bool {
		a, b := manifests[i], manifests[j]
		if a.order != b.order {
			return a.order < b.order
		}
		return a.order == len(installOrder) && a.kind < b.kind
	})
	var out strings.Builder
	if includeCRDs {
		files, _ := filepath.Glob(filepath.Join(chartDir, "crds", "*.y*ml"))
		sort.Strings(files)
		for _, file := range files {
			data, err := os.ReadFile(file)
			if err != nil {
				return "", err
			}
			fmt.Fprintf(&out, "---\n# Source: %s/crds/%s\n%s\n", chartName, filepath.Base(file),
				strings.TrimRight(string(data), "\n"))
		}
	}
	for _, m := range manifests {
		fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", m.source, m.content)
	}
	if notes {
		for _, source := range sources {
			if strings.HasSuffix(source, "/NOTES.txt") {
				fmt.Fprintf(&out, "\nNOTES:\n%s\n", strings.TrimSpace(rendered[source]))
			}
		}
	}
	return out.String(), nil
}

func onlyComments(doc string) bool {
	for _, line := range strings.Split(doc, "\n") {
		if t := strings.TrimSpace(line); t != "" && !strings.HasPrefix(t, "#") {
			return false
		}
	}
	return true
}
